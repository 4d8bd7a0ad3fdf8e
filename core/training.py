"""Training and evaluating a run: dataset folder -> model -> run folder with history, predictions, metrics.

Training streams its progress into the run folder (``history.csv`` per epoch, ``progress.json`` per
batch), so pages can follow a run that another process is training, and it stops cleanly when a
``cancel`` file appears in the run folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from core import data as data_lib
from core import runs, split_checks, system
from core.finishing import (  # re-exported: the names callers used before core.finishing existed
    SPLITS_FILE,
    complete_run,
    evaluate,
    save_model_atomic,
    save_splits,
    stop_run,
    test_split_of,
)
from core.models import ARCHITECTURES, build_model, set_trainable_top

__all__ = [
    "SPLITS_FILE",
    "ImageBatches",
    "RunRecorder",
    "TrainingConfig",
    "class_weights_for",
    "evaluate",
    "save_model_atomic",
    "save_splits",
    "test_split_of",
    "train",
]

CANCEL_FILE = runs.CANCEL_FILE
BEST_WEIGHTS_FILE = ".best.weights.h5"
IMBALANCE_THRESHOLD = 1.5  # largest/smallest class above this: class weights are used automatically
CLASS_WEIGHT_MODES = ("always", "none")  # and None: only when imbalanced; "auto" is an old name of "always"
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
    class_weights: str | None = None  # "always"; "none": never; None: only above IMBALANCE_THRESHOLD
    fine_tune_epochs: int = 0
    fine_tune_fraction: float = 0.2  # share of the backbone's top layers unfrozen for fine-tuning
    fine_tune_lr_factor: float = 0.1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_split: bool = False

    def __post_init__(self) -> None:
        if self.class_weights == "auto":  # the old name of "always"
            self.class_weights = "always"

    def validate(self) -> None:
        """Raises ValueError naming the first bad field and the value received."""
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1. Received: epochs={self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1. Received: batch_size={self.batch_size}"),
            (
                0 < self.learning_rate < 1,
                f"learning_rate must be between 0 and 1. Received: learning_rate={self.learning_rate}",
            ),
            (
                self.fine_tune_epochs >= 0,
                f"fine_tune_epochs must be 0 or more. Received: fine_tune_epochs={self.fine_tune_epochs}",
            ),
            (
                self.class_weights in (None, *CLASS_WEIGHT_MODES),
                f"class_weights must be 'always', 'none' or None (only when imbalanced). "
                f"Received: class_weights={self.class_weights!r}",
            ),
            (self.seed >= 0, f"seed must be 0 or more. Received: seed={self.seed}"),
            (
                self.early_stopping_patience >= 1,
                f"early_stopping_patience must be at least 1. Received: {self.early_stopping_patience}",
            ),
            (
                0 < self.fine_tune_fraction <= 1,
                f"fine_tune_fraction must be in (0, 1]. Received: fine_tune_fraction={self.fine_tune_fraction}",
            ),
            (
                0 < self.fine_tune_lr_factor <= 1,
                f"fine_tune_lr_factor must be in (0, 1]. Received: fine_tune_lr_factor={self.fine_tune_lr_factor}",
            ),
            (
                0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1,
                f"val_fraction and test_fraction must be in [0, 1). "
                f"Received: val_fraction={self.val_fraction}, test_fraction={self.test_fraction}",
            ),
            (
                self.val_fraction + self.test_fraction < 1,
                f"val_fraction + test_fraction must be below 1. Received: {self.val_fraction + self.test_fraction}",
            ),
            (
                16 <= self.image_size <= 1024,
                f"image_size must be between 16 and 1024 pixels. Received: image_size={self.image_size}",
            ),
        ]
        from core.catalog import ARCHITECTURE_SPECS

        checks += [
            (
                self.arch in ARCHITECTURE_SPECS,
                f"Unknown architecture. Expected one of {list(ARCHITECTURE_SPECS)}. Received: arch={self.arch!r}",
            ),
            (
                self.weights is None or ARCHITECTURE_SPECS.get(self.arch, ("x",))[0] is not None,
                f"{self.arch} has no pre-trained weights: train it from scratch (weights none). "
                f"Received: weights={self.weights!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class ImageBatches(keras.utils.PyDataset):
    """Batches of (pixels 0-255 float32, integer labels) decoded with Pillow from file paths.

    Decoded images are kept in memory when the whole split fits in ``cache_bytes``.
    """

    def __init__(
        self,
        paths,
        labels,
        size: tuple[int, int],
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        cache_bytes: float = 2e9,
    ):
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
        """Random horizontal flip, then a random crop of 80-100% of each side resized back (zoom)."""
        from PIL import Image

        height, width = self.size
        for i in range(len(images)):
            if self.rng.random() < 0.5:
                images[i] = images[i, :, ::-1]
            scale = self.rng.uniform(0.8, 1.0)
            crop_h, crop_w = max(1, int(height * scale)), max(1, int(width * scale))
            top = self.rng.integers(0, height - crop_h + 1)
            left = self.rng.integers(0, width - crop_w + 1)
            crop = images[i, top : top + crop_h, left : left + crop_w].astype(np.uint8)
            images[i] = np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR), dtype=np.float32)
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


def class_weights_for(
    labels: Sequence[int] | np.ndarray, num_classes: int, mode: str | None
) -> dict[int, float] | None:
    """Balanced class weights (n / (k * n_c)) when asked (``"always"``, old name ``"auto"``) or, with
    ``mode=None``, when the largest class has more than IMBALANCE_THRESHOLD times the images of the
    smallest; otherwise (``"none"``, balanced classes, a class without images) None."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    if mode == "none" or counts.min() == 0:
        return None
    if mode not in ("always", "auto") and counts.max() / counts.min() <= IMBALANCE_THRESHOLD:
        return None
    return {i: float(counts.sum() / (num_classes * c)) for i, c in enumerate(counts)}


# ---------------------------------------------------------------------------------------------------
# train: scan -> record the run -> build -> fit (one or two phases) -> finish


def train(
    workspace: str | Path,
    data_dir: str | Path,
    config: TrainingConfig | None = None,
    name: str | None = None,
    progress: ProgressFn | None = None,
    extra_meta: dict | None = None,
    on_run_created: Callable[[runs.Run], None] | None = None,
    extra_callbacks: Callable[[runs.Run], Sequence[keras.callbacks.Callback]] | None = None,
) -> runs.Run:
    """Scans ``data_dir``, trains ``config.arch`` on it, evaluates on the test split, saves a run.

    Args:
        workspace: the workspace folder; the run goes to ``<workspace>/runs/<run id>/``.
        data_dir: the image folder (see `core.data.scan_dataset`).
        config: hyper-parameters (default `TrainingConfig()`).
        name: the run's name (default the architecture).
        progress: called with a dict per event (``stage``: warnings, loading, training, evaluating).
        extra_meta: more fields for run.json.
        on_run_created: called with the new run as soon as its folder exists (a job records its id).
        extra_callbacks: called with the new run; returns more Keras callbacks for ``fit`` (experiment
            tracking, say). They see every epoch of every phase.

    Returns:
        The run, complete or (cancel file) cancelled.

    Raises:
        ValueError: a bad configuration; DatasetError: splits that cannot be trained and evaluated;
        WeightsUnavailableError: pre-trained weights that cannot be had; all before any run exists. Any later error marks the run failed (with the error) and is raised
        again; nothing a page reads is left half-written.
    """
    config = config or TrainingConfig()
    config.validate()
    index, warnings = scan_and_check(data_dir, config)
    if warnings and progress:
        progress({"stage": "warnings", "warnings": warnings, "message": " ".join(warnings)})
    weights = class_weights_for(index.split("train")["label"], len(index.class_names), config.class_weights)
    meta = _run_meta(index, config, name, weights, warnings, extra_meta)
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if progress:
        progress({"stage": "building", "message": f"Building {config.arch} (weights: {config.weights or 'none'})"})
    # Built before the run exists: missing pre-trained weights fail here and leave no run behind.
    model = build_model(config.arch, len(index.class_names), meta["input_size"], weights=config.weights)
    run = runs.create_run(workspace, meta["name"], meta)
    if on_run_created:
        on_run_created(run)
    try:
        save_splits(run, index)
        more = list(extra_callbacks(run)) if extra_callbacks else []
        recorder = _fit(run, model, index, config, weights, progress, more)
        if recorder is None or recorder.cancelled:
            return stop_run(run, reason="Cancelled by the user.")
        return _finish(run, model, index, recorder, started, progress)
    except BaseException as exc:
        stop_run(run, exc)
        raise
    finally:
        runs.clean_leftovers(run.path)


def scan_and_check(data_dir: str | Path, config: TrainingConfig) -> tuple[data_lib.DatasetIndex, list[str]]:
    """Scans the dataset with the configuration's split settings; refuses splits that cannot be
    evaluated and returns the warnings about the others (see `core.split_checks`)."""
    index = data_lib.scan_dataset(
        data_dir, config.val_fraction, config.test_fraction, seed=config.seed, group_split=config.group_split
    )
    return index, split_checks.check_splits(index)


def _run_meta(
    index: data_lib.DatasetIndex,
    config: TrainingConfig,
    name: str | None,
    weights: dict[int, float] | None,
    warnings: list[str],
    extra_meta: dict | None,
) -> dict:
    """What run.json records about a training run when it starts."""
    return {
        "name": name or config.arch,
        "source": "trained",
        "dataset": str(Path(index.root).resolve()),
        "class_names": index.class_names,
        "architecture": config.arch,
        "input_size": [config.image_size, config.image_size],
        "preprocessing": ARCHITECTURES[config.arch].preprocessing if config.arch in ARCHITECTURES else None,
        "hyperparameters": asdict(config),
        "class_weights": {index.class_names[i]: round(w, 4) for i, w in weights.items()} if weights else None,
        "seed": config.seed,
        "library_versions": system.library_versions(),
        "device": system.device_in_use(),
        "split_counts": {s: int((index.records["split"] == s).sum()) for s in data_lib.SPLITS},
        "skipped_files": len(index.skipped),
        "warnings": list(warnings),
        **(extra_meta or {}),
    }


def _phases(config: TrainingConfig) -> list[tuple[int, float, float]]:
    """(epochs, learning rate, trainable share of the backbone) per phase. With pre-trained weights the
    backbone stays frozen first, then its top is fine-tuned; from scratch everything trains."""
    phases = [(config.epochs, config.learning_rate, 0.0 if config.weights else 1.0)]
    if config.fine_tune_epochs:
        fraction = config.fine_tune_fraction if config.weights else 1.0
        phases.append((config.fine_tune_epochs, config.learning_rate * config.fine_tune_lr_factor, fraction))
    return phases


def _fit(
    run: runs.Run,
    model: keras.Model,
    index: data_lib.DatasetIndex,
    config: TrainingConfig,
    weights: dict[int, float] | None,
    progress: ProgressFn | None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> RunRecorder | None:
    """Loads the images and fits every phase; returns the recorder (None: cancelled while loading)."""
    size = (config.image_size, config.image_size)
    train_split, val_split = index.split("train"), index.split("val")
    if progress:
        progress({"stage": "loading", "message": f"Loading {len(train_split) + len(val_split)} images"})
    train_data = ImageBatches(
        train_split["path"], train_split["label"], size, config.batch_size, True, config.augment, config.seed
    )
    val_data = ImageBatches(val_split["path"], val_split["label"], size, config.batch_size)
    if run.file(CANCEL_FILE).exists():  # cancelled while the images were loading
        return None
    recorder = RunRecorder(run, config.epochs + config.fine_tune_epochs, len(train_data), progress)
    callbacks = [recorder, keras.callbacks.TerminateOnNaN()]
    if len(val_split):
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                run.path / BEST_WEIGHTS_FILE, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6),
        ]
    callbacks.append(_drift_callback(run, model, index, size))
    callbacks += list(extra_callbacks)
    done = 0
    for epochs, learning_rate, trainable_fraction in _phases(config):
        set_trainable_top(model, trainable_fraction)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(
            train_data,
            validation_data=val_data if len(val_split) else None,
            initial_epoch=done,
            epochs=done + epochs,
            callbacks=callbacks,
            class_weight=weights,
            verbose=0,
        )
        done = len(recorder.rows)
        if recorder.cancelled:  # early stopping ends a phase only: fine-tuning still follows
            break
    if not recorder.cancelled and recorder.rows and not np.isfinite(recorder.rows[-1].get("loss", np.nan)):
        raise ValueError(
            f"Training diverged: the loss became NaN in epoch {len(recorder.rows)}. "
            f"Lower the learning rate (it was {config.learning_rate})."
        )
    return recorder


DRIFT_PROBES_PER_CLASS = 2
DRIFT_MAX_PROBES = 12


def _drift_callback(run: runs.Run, model: keras.Model, index: data_lib.DatasetIndex, size) -> keras.callbacks.Callback:
    """Explanation drift: a few test images per class explained with Grad-CAM after every epoch (see
    `core.drift`); the Training page shows them as a film strip."""
    from core.drift import ExplanationDrift, probe_set

    probes = probe_set(index.split("test"), DRIFT_PROBES_PER_CLASS).head(DRIFT_MAX_PROBES)
    return ExplanationDrift(run.path, probes["path"], probes["label"], size, "gradcam")


def _finish(
    run: runs.Run,
    model: keras.Model,
    index: data_lib.DatasetIndex,
    recorder: RunRecorder,
    started: float,
    progress: ProgressFn | None,
) -> runs.Run:
    """Best epoch's weights back, model saved, test split evaluated, run marked complete."""
    best_path = run.path / BEST_WEIGHTS_FILE
    if best_path.exists():
        model.load_weights(best_path)  # the best epoch by validation loss
    train_seconds = time.monotonic() - started
    save_model_atomic(model, run.model_path)
    if progress:
        progress({"stage": "evaluating", "message": "Evaluating on the test split"})
    metrics = evaluate(run, model=model, index=index)
    return complete_run(
        run,
        metrics,
        started,
        durations={"train_seconds": round(train_seconds, 2)},
        epochs_trained=len(recorder.rows),
        best_epoch=_best_epoch(recorder.rows),
    )


def _best_epoch(rows: list[dict]) -> int | None:
    with_val = [r for r in rows if "val_loss" in r]
    return int(min(with_val, key=lambda r: r["val_loss"])["epoch"]) if with_val else None
