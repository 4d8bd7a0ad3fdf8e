"""Training and evaluating a run: dataset folder -> model -> run folder with history, predictions, metrics.

Training streams its progress into the run folder (``history.csv`` per epoch, ``progress.json`` per
batch), so pages can follow a run that another process is training, and it stops cleanly when a
``cancel`` file appears in the run folder.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from core import data as data_lib
from core import evaluation, runs, system
from core.models import build_model, input_size, predict_proba

CANCEL_FILE = runs.CANCEL_FILE
IMBALANCE_THRESHOLD = 1.5  # largest/smallest class above this: class weights are used automatically
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
    class_weights: str | None = None  # "auto": always; None: only above IMBALANCE_THRESHOLD
    fine_tune_epochs: int = 0
    fine_tune_fraction: float = 0.2  # share of the backbone's top layers unfrozen for fine-tuning
    fine_tune_lr_factor: float = 0.1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_split: bool = False

    def validate(self) -> None:
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
                self.class_weights in (None, "auto", "none"),
                f"class_weights must be 'auto' or None. Received: class_weights={self.class_weights!r}",
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
                f"{self.arch} has no pre-trained weights: train it with weights=None. Received: weights={self.weights!r}",
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


def class_weights_for(labels, num_classes: int, mode: str | None) -> dict[int, float] | None:
    """Balanced class weights (n / (k * n_c)) when asked (``"auto"``) or when the largest class has more
    than IMBALANCE_THRESHOLD times the images of the smallest; otherwise None."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    if mode == "none" or counts.min() == 0:
        return None
    if mode != "auto" and counts.max() / counts.min() <= IMBALANCE_THRESHOLD:
        return None
    return {i: float(counts.sum() / (num_classes * c)) for i, c in enumerate(counts)}


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
    index = data_lib.scan_dataset(
        data_dir, config.val_fraction, config.test_fraction, seed=config.seed, group_split=config.group_split
    )
    size = (config.image_size, config.image_size)
    from core.models import ARCHITECTURES, set_trainable_top

    train_split, val_split = index.split("train"), index.split("val")
    for split_name, split in (("train", train_split), ("test", index.split("test"))):
        if split.empty:
            raise data_lib.DatasetError(
                f"The {split_name} split of {index.root} would be empty ({len(index.records)} images, "
                f"counts per class {index.counts().sum(axis=1).to_dict()}). Add images or change the split fractions."
            )
    weights = class_weights_for(train_split["label"], len(index.class_names), config.class_weights)
    meta = {
        "name": name or config.arch,
        "source": "trained",
        "dataset": str(Path(data_dir).resolve()),
        "class_names": index.class_names,
        "architecture": config.arch,
        "input_size": list(size),
        "preprocessing": ARCHITECTURES[config.arch].preprocessing if config.arch in ARCHITECTURES else None,
        "hyperparameters": asdict(config),
        "class_weights": {index.class_names[i]: round(w, 4) for i, w in weights.items()} if weights else None,
        "seed": config.seed,
        "library_versions": system.library_versions(),
        "device": system.device_in_use(),
        "split_counts": {s: int((index.records["split"] == s).sum()) for s in data_lib.SPLITS},
        "skipped_files": len(index.skipped),
        **(extra_meta or {}),
    }
    run = runs.create_run(workspace, meta["name"], meta)
    save_splits(run, index)
    started = time.monotonic()
    try:
        keras.utils.set_random_seed(config.seed)
        model = build_model(config.arch, len(index.class_names), size, weights=config.weights)
        if progress:
            progress({"stage": "loading", "message": f"Loading {len(train_split) + len(val_split)} images"})
        train_data = ImageBatches(
            train_split["path"], train_split["label"], size, config.batch_size, True, config.augment, config.seed
        )
        val_data = ImageBatches(val_split["path"], val_split["label"], size, config.batch_size)
        if run.file(CANCEL_FILE).exists():  # cancelled while the images were loading
            return runs.mark_stopped(run, "Cancelled by the user.", status=runs.CANCELLED)
        total_epochs = config.epochs + config.fine_tune_epochs
        recorder = RunRecorder(run, total_epochs, len(train_data), progress)
        best_path = run.path / ".best.weights.h5"
        callbacks = [recorder, keras.callbacks.TerminateOnNaN()]
        if len(val_split):
            callbacks += [
                keras.callbacks.ModelCheckpoint(
                    best_path, monitor="val_loss", save_best_only=True, save_weights_only=True
                ),
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6),
            ]
        # Phase 1: with pre-trained weights the backbone stays frozen; from scratch everything trains.
        phases = [(config.epochs, config.learning_rate, 0.0 if config.weights else 1.0)]
        if config.fine_tune_epochs:
            fraction = config.fine_tune_fraction if config.weights else 1.0
            phases.append((config.fine_tune_epochs, config.learning_rate * config.fine_tune_lr_factor, fraction))
        done = 0
        for epochs, learning_rate, trainable_fraction in phases:
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
        if recorder.cancelled:
            return runs.mark_stopped(run, "Cancelled by the user.", status=runs.CANCELLED)
        if recorder.rows and not np.isfinite(recorder.rows[-1].get("loss", np.nan)):
            raise ValueError(
                f"Training diverged: the loss became NaN in epoch {len(recorder.rows)}. "
                f"Lower the learning rate (it was {config.learning_rate})."
            )
        if best_path.exists():
            model.load_weights(best_path)  # the best epoch by validation loss
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
            best_epoch=_best_epoch(recorder.rows),
            durations={"train_seconds": round(train_seconds, 2), "total_seconds": round(time.monotonic() - started, 2)},
            test_accuracy=metrics["accuracy"],
            roc_auc_macro=metrics["roc_auc_macro"],
        )
    except KeyboardInterrupt:
        runs.mark_stopped(run, "Interrupted.", status=runs.CANCELLED)
        raise
    except BaseException as exc:
        runs.update_run(run, traceback=traceback.format_exc(limit=20))
        runs.mark_stopped(run, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        (run.path / ".best.weights.h5").unlink(missing_ok=True)


def _best_epoch(rows: list[dict]) -> int | None:
    with_val = [r for r in rows if "val_loss" in r]
    return int(min(with_val, key=lambda r: r["val_loss"])["epoch"]) if with_val else None


SPLITS_FILE = "splits.csv"


def save_splits(run: runs.Run, index: data_lib.DatasetIndex) -> None:
    """Records which file went to which split, so evaluation and pages use exactly the training split."""
    columns = ["path", "split", "class_name", "label"]
    runs.atomic_write_csv(run.file(SPLITS_FILE), index.records[columns])


def test_split_of(run: runs.Run) -> pd.DataFrame:
    """The run's test split: as recorded at training time, or (older and imported runs) scanned again."""
    recorded = run.file(SPLITS_FILE)
    if recorded.exists():
        splits = pd.read_csv(recorded, dtype={"path": str, "split": str, "class_name": str}, keep_default_na=False)
        return splits[splits["split"] == "test"].reset_index(drop=True)
    hp = run.meta.get("hyperparameters") or {}
    index = data_lib.scan_dataset(
        run.meta["dataset"],
        hp.get("val_fraction", 0.15),
        hp.get("test_fraction", 0.15),
        seed=run.meta.get("seed", 0),
        group_split=hp.get("group_split", False),
    )
    return index.split("test")


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
    """Predicts the run's test split; writes predictions.csv and metrics.json.

    Raises:
        DatasetError: the test split is empty, or holds a class the run does not know.
        ImageError: a test image can no longer be read.
    """
    if model is None:
        from core.model_import import load_run_model

        model = load_run_model(run.path)
    test = index.split("test") if index is not None else test_split_of(run)
    if not len(test):
        raise data_lib.DatasetError(f"The dataset {run.meta.get('dataset')} has no test images to evaluate on.")
    class_names = run.class_names or sorted(set(test["class_name"]))
    order = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(test["class_name"]) - set(order))
    if unknown:
        raise data_lib.DatasetError(f"The test split holds classes the model does not know: {unknown}")
    labels = [order[c] for c in test["class_name"]]  # the model's output order, which may differ from the folders'
    size = input_size(model)
    paths = list(test["path"])
    probs = np.concatenate(
        [
            predict_proba(model, data_lib.load_images(paths[i : i + batch_size], size))
            for i in range(0, len(paths), batch_size)
        ]
    )
    predictions = evaluation.predictions_frame(paths, labels, probs, class_names)
    metrics = evaluation.compute_metrics(predictions)
    runs.atomic_write_csv(run.file(runs.PREDICTIONS_FILE), predictions)
    runs.atomic_write_json(run.file(runs.METRICS_FILE), metrics)
    return metrics
