"""Training and evaluating a run: dataset folder -> model -> run folder with history, predictions, metrics.

Training streams its progress into the run folder (``history.csv`` per epoch, ``progress.json`` per
batch), so pages can follow a run that another process is training, and it stops cleanly when a
``cancel`` file appears in the run folder.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core import data as data_lib
from core import evaluation, runs, system
from core.models import build_model, input_size, load_model, predict_proba

import keras  # noqa: E402

CANCEL_FILE = "cancel"
ProgressFn = Callable[[dict], None]


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run (recorded in run.json)."""

    arch: str = "compact_cnn"
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    weights: str | None = None
    augment: bool = False
    early_stopping_patience: int = 4

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1. Received: epochs={self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1. Received: batch_size={self.batch_size}"),
            (
                0 < self.learning_rate < 1,
                f"learning_rate must be between 0 and 1. Received: learning_rate={self.learning_rate}",
            ),
            (
                16 <= self.image_size <= 1024,
                f"image_size must be between 16 and 1024 pixels. Received: image_size={self.image_size}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class ImageBatches(keras.utils.PyDataset):
    """Batches of (pixels 0-255 float32, integer labels) decoded with Pillow from file paths.

    Decoded images are kept in memory when the whole split fits in ``cache_bytes``.
    """

    def __init__(self, paths, labels, size, batch_size, shuffle=False, augment=False, seed=0, cache_bytes=2e9):
        super().__init__(workers=1, use_multiprocessing=False)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.paths))
        fits = len(self.paths) * size[0] * size[1] * 3 * 4 <= cache_bytes
        self.cache = data_lib.load_images(self.paths, size) if fits else None
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.cache is not None:
            images = self.cache[chosen].copy()
        else:
            images = data_lib.load_images([self.paths[i] for i in chosen], self.size)
        if self.augment:
            images = self._augment(images)
        return images, self.labels[chosen]

    def _augment(self, images):
        flip = self.rng.random(len(images)) < 0.5
        images[flip] = images[flip, :, ::-1]
        return images

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


class RunRecorder(keras.callbacks.Callback):
    """Writes history.csv after every epoch and progress.json while training; honours a cancel file."""

    def __init__(self, run: runs.Run, epochs: int, steps: int, progress: ProgressFn | None = None):
        super().__init__()
        self.run, self.epochs, self.steps, self.progress = run, epochs, steps, progress
        self.rows: list[dict] = []
        self.epoch = 0
        self.last_write = 0.0
        self.cancelled = False

    def _emit(self, **info):
        info = {"stage": "training", "epoch": self.epoch + 1, "epochs": self.epochs, "steps": self.steps, **info}
        now = time.monotonic()
        if now - self.last_write > 0.5 or info.get("final"):
            runs.write_progress(self.run, **info)
            self.last_write = now
        if self.progress:
            self.progress(info)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._emit(step=batch + 1, loss=float((logs or {}).get("loss", float("nan"))))
        if self.run.file(CANCEL_FILE).exists():
            self.cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items() if k != "learning_rate"}}
        row["learning_rate"] = float(np.asarray(lr))
        self.rows.append(row)
        runs.atomic_write_csv(self.run.file(runs.HISTORY_FILE), pd.DataFrame(self.rows))
        self._emit(step=self.steps, final=True, **{k: v for k, v in row.items() if k != "epoch"})


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU"


def train(
    workspace,
    data_dir,
    config: TrainingConfig | None = None,
    name: str | None = None,
    progress: ProgressFn | None = None,
    extra_meta: dict | None = None,
) -> runs.Run:
    """Scans ``data_dir``, trains ``config.arch`` on it, evaluates on the test split, saves a run.

    Returns the completed run. On error the run is marked failed (with the error) and the error is
    raised again; nothing a page reads is left half-written.
    """
    config = config or TrainingConfig()
    config.validate()
    index = data_lib.scan_dataset(data_dir, seed=config.seed)
    size = (config.image_size, config.image_size)
    meta = {
        "name": name or config.arch,
        "dataset": str(Path(data_dir).resolve()),
        "class_names": index.class_names,
        "architecture": config.arch,
        "input_size": list(size),
        "preprocessing": None,
        "hyperparameters": asdict(config),
        "seed": config.seed,
        "library_versions": system.library_versions(),
        "device": _device(),
        "split_counts": {s: int((index.records["split"] == s).sum()) for s in data_lib.SPLITS},
        "skipped_files": len(index.skipped),
        **(extra_meta or {}),
    }
    run = runs.create_run(workspace, meta["name"], meta)
    started = time.monotonic()
    try:
        keras.utils.set_random_seed(config.seed)
        model = build_model(config.arch, len(index.class_names), size, weights=config.weights)
        from core.models import ARCHITECTURES

        run = runs.update_run(run, preprocessing=ARCHITECTURES[config.arch].preprocessing)
        train_split, val_split = index.split("train"), index.split("val")
        if progress:
            progress({"stage": "loading", "message": f"Loading {len(train_split) + len(val_split)} images"})
        train_data = ImageBatches(
            train_split["path"], train_split["label"], size, config.batch_size, True, config.augment, config.seed
        )
        val_data = ImageBatches(val_split["path"], val_split["label"], size, config.batch_size)
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        recorder = RunRecorder(run, config.epochs, len(train_data), progress)
        callbacks = [recorder]
        if len(val_split):
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
                )
            )
        model.fit(
            train_data, validation_data=val_data if len(val_split) else None, epochs=config.epochs,
            callbacks=callbacks, verbose=0,
        )
        if recorder.cancelled:
            return runs.mark_failed(run, "Cancelled by the user.", status=runs.CANCELLED)
        train_seconds = time.monotonic() - started
        save_model_atomic(model, run.model_path)
        if progress:
            progress({"stage": "evaluating", "message": "Evaluating on the test split"})
        metrics = evaluate(run, model=model, index=index)
        return runs.update_run(
            run,
            status=runs.COMPLETE,
            finished_at=runs.utc_now(),
            epochs_trained=len(recorder.rows),
            durations={"train_seconds": round(train_seconds, 2), "total_seconds": round(time.monotonic() - started, 2)},
            test_accuracy=metrics["accuracy"],
            roc_auc_macro=metrics["roc_auc_macro"],
        )
    except KeyboardInterrupt:
        runs.mark_failed(run, "Interrupted.", status=runs.CANCELLED)
        raise
    except BaseException as exc:
        runs.update_run(run, traceback=traceback.format_exc(limit=20))
        runs.mark_failed(run, f"{type(exc).__name__}: {exc}")
        raise


def save_model_atomic(model, path) -> None:
    """Saves to a temporary .keras file beside ``path``, then renames it into place."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.stem}-{time.time_ns()}.keras")
    try:
        model.save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate(run: runs.Run, model=None, index: data_lib.DatasetIndex | None = None, batch_size: int = 64) -> dict:
    """Predicts the test split of the run's dataset; writes predictions.csv and metrics.json."""
    model = model or load_model(run.model_path)
    index = index or data_lib.scan_dataset(run.meta["dataset"], seed=run.meta.get("seed", 0))
    test = index.split("test")
    if not len(test):
        raise ValueError(f"The dataset {index.root} has no test images to evaluate on.")
    size = input_size(model)
    probs = np.concatenate(
        [
            predict_proba(model, data_lib.load_images(list(test["path"][i : i + batch_size]), size))
            for i in range(0, len(test), batch_size)
        ]
    )
    class_names = run.class_names or index.class_names
    predictions = evaluation.predictions_frame(test["path"], test["label"], probs, class_names)
    metrics = evaluation.compute_metrics(predictions)
    runs.atomic_write_csv(run.file(runs.PREDICTIONS_FILE), predictions)
    runs.atomic_write_json(run.file(runs.METRICS_FILE), metrics)
    return metrics
