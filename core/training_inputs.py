"""The input pipeline of a training run: the train and validation splits through `core.pipeline` (file
headers read to pick each file's decoder, optional on-disk cache, batches), and what run.json records about
it. Used by `core.training` (Keras fit) and `core.multiworker` (a custom loop)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from core import data as data_lib
from core import pipeline
from core.training_config import TrainingConfig

CACHE_FOLDER = ("cache", "pipeline")  # under the workspace: decoded, resized images (--cache)


@dataclass
class Inputs:
    """The train and validation datasets, what each pass delivered, and what run.json records."""

    train: object  # tf.data.Dataset of (float32 pixels, int32 labels)
    val: object | None
    steps: int
    trackers: dict[str, pipeline.PassTracker]
    record: dict

    def summary(self) -> dict:
        """run.json's ``input_pipeline``: decoders, cache, and the files skipped as unreadable."""
        skipped = {split: tracker.summary() for split, tracker in self.trackers.items()}
        return {
            **self.record,
            "unreadable_files": sum(s["skipped_files"] for s in skipped.values()),
            "unreadable_examples": [e for s in skipped.values() for e in s["examples"]][:10],
        }


def make_inputs(
    workspace: Path,
    index: data_lib.DatasetIndex,
    config: TrainingConfig,
    batch_size: int,
    cancelled: Callable[[], bool],
) -> Inputs | None:
    """The pipeline of the train and validation splits, ``batch_size`` images per batch (None: cancelled
    while the file headers were read or the cache was built)."""
    size = (config.image_size, config.image_size)
    splits = {name: index.split(name) for name in ("train", "val")}
    routes, trackers, caches = {}, {}, {}
    for name, frame in splits.items():
        routes[name] = pipeline.plan_routes(list(frame["path"]), cancelled=cancelled)
        trackers[name] = pipeline.PassTracker(frame["path"])
        if cancelled():
            return None
        if config.cache and len(frame):
            prefix = pipeline.cache_prefix(workspace.joinpath(*CACHE_FOLDER), list(frame["path"]), size, routes[name])
            if not pipeline.cache_exists(prefix):
                built = pipeline.build_cache(
                    list(frame["path"]), frame["label"], size, routes[name], prefix, trackers[name], cancelled
                )
                if not built:
                    return None
                trackers[name].end_pass()
            caches[name] = prefix
    datasets = {
        name: pipeline.training_dataset(
            list(frame["path"]),
            frame["label"],
            size,
            batch_size,
            routes=routes[name],
            tracker=trackers[name],
            shuffle=name == "train",
            augment=config.augment and name == "train",
            seed=config.seed,
            cache=caches.get(name),
        )
        for name, frame in splits.items()
        if len(frame)
    }
    every = np.concatenate([routes["train"], routes["val"]])
    record = {
        "decoders": {
            "tensorflow": int((every != pipeline.ROUTE_PILLOW).sum()),
            "pillow": int((every == pipeline.ROUTE_PILLOW).sum()),
        },
        "cache": str(caches["train"]) if "train" in caches else None,
        "batch_size": int(batch_size),
    }
    steps = max(1, math.ceil(len(splits["train"]) / batch_size))
    return Inputs(datasets["train"], datasets.get("val"), steps, trackers, record)


class PassCounter(keras.callbacks.Callback):
    """Closes each split's pass at the end of every epoch: the files a pass did not deliver were skipped."""

    def __init__(self, trackers: dict[str, pipeline.PassTracker]):
        super().__init__()
        self.trackers = trackers

    def on_epoch_end(self, epoch, logs=None):
        for tracker in self.trackers.values():
            tracker.end_pass()
