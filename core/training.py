"""Training and evaluating a run: dataset folder -> model -> run folder with history, predictions, metrics.

Training streams its progress into the run folder (``history.csv`` per epoch, ``progress.json`` per
batch), so pages can follow a run that another process is training, and it stops cleanly when a
``cancel`` file appears in the run folder. Images come through the tf.data pipeline (`core.pipeline`):
parallel decoding, batched augmentation, prefetch, an optional on-disk cache, bounded memory; files that
became unreadable after the scan are skipped and counted in run.json (``input_pipeline``). The strategy
(`core.distribute`: one device, mirrored over devices, several machines with `core.multiworker`), the
devices, the batch sizes and the precision are recorded under ``distribution``.
"""

from __future__ import annotations

import time
import warnings as python_warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from core import data as data_lib
from core import distribute, runs, split_checks, system
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
from core.training_config import (  # re-exported: callers import them from here
    CLASS_WEIGHT_MODES,
    IMBALANCE_THRESHOLD,
    TrainingConfig,
    class_weights_for,
)
from core.training_inputs import Inputs, PassCounter, make_inputs

__all__ = [
    "CLASS_WEIGHT_MODES",
    "IMBALANCE_THRESHOLD",
    "SPLITS_FILE",
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
ProgressFn = Callable[[dict], None]


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
    backup_dir: str | Path | None = None,
) -> runs.Run | None:
    """Scans ``data_dir``, trains ``config.arch`` on it, evaluates on the test split, saves a run.

    Args:
        workspace: the workspace folder; the run goes to ``<workspace>/runs/<run id>/``.
        data_dir: the image folder (see `core.data.scan_dataset`).
        config: hyper-parameters (default `TrainingConfig()`), strategy and precision included.
        name: the run's name (default the architecture).
        progress: called with a dict per event (``stage``: warnings, loading, training, evaluating).
        extra_meta: more fields for run.json.
        on_run_created: called with the new run as soon as its folder exists (a job records its id).
        extra_callbacks: called with the new run; returns more Keras callbacks for ``fit`` (experiment
            tracking, say). They see every epoch of every phase.
        backup_dir: ``strategy="multiworker"`` only: where checkpoints go (a folder every worker can
            read; default under the workspace), see `core.multiworker`.

    Returns:
        The run, complete or (cancel file) cancelled; None on a worker of a multi-worker cluster that is
        not the chief (only the chief writes the run).

    Raises:
        ValueError: a bad configuration; DatasetError: splits that cannot be trained and evaluated;
        WeightsUnavailableError: pre-trained weights that cannot be had; DistributeError: a strategy that
        cannot be set up; all before any run exists. Any later error marks the run failed (with the
        error) and is raised again; nothing a page reads is left half-written.
    """
    config = config or TrainingConfig()
    config.validate()
    placement = distribute.make_strategy(config.strategy)  # first: a multi-worker cluster must start before any op
    if config.strategy == "multiworker":
        from core import multiworker

        return multiworker.train(
            workspace,
            data_dir,
            config,
            placement,
            name,
            progress,
            extra_meta,
            on_run_created,
            extra_callbacks,
            backup_dir,
        )
    index, warnings, weights, meta, policy = prepare(data_dir, config, placement, name, extra_meta)
    if warnings and progress:
        progress({"stage": "warnings", "warnings": warnings, "message": " ".join(warnings)})
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if progress:
        progress({"stage": "building", "message": f"Building {config.arch} (weights: {config.weights or 'none'})"})
    # Built before the run exists: missing pre-trained weights fail here and leave no run behind.
    model = build_for(config, len(index.class_names), meta["input_size"], placement.strategy, policy)
    run = runs.create_run(workspace, meta["name"], meta)
    if on_run_created:
        on_run_created(run)
    try:
        save_splits(run, index)
        more = list(extra_callbacks(run)) if extra_callbacks else []
        recorder, inputs = _fit(run, model, index, config, weights, progress, more, placement, policy)
        if recorder is None or recorder.cancelled:
            return stop_run(run, reason="Cancelled by the user.")
        return _finish(run, model, index, recorder, started, progress, inputs, config, policy)
    except BaseException as exc:
        stop_run(run, exc)
        raise
    finally:
        runs.clean_leftovers(run.path)


def prepare(data_dir, config: TrainingConfig, placement: distribute.Placement, name, extra_meta):
    """Scan, split checks, class weights, precision and the run.json of a new run:
    (index, warnings, class weights, meta, dtype policy)."""
    index, warnings = scan_and_check(data_dir, config)
    weights = class_weights_for(index.split("train")["label"], len(index.class_names), config.class_weights)
    policy, note = distribute.precision_policy(config.mixed_precision, placement.on_gpu)
    warnings = [*warnings, *([note] if note else []), *placement.notes]
    meta = _run_meta(index, config, name, weights, warnings, extra_meta)
    meta["distribution"] = placement.record(config.batch_size, config.learning_rate, config.lr_rule, policy)
    return index, warnings, weights, meta, policy


def build_for(config: TrainingConfig, num_classes: int, size, strategy, policy: str) -> keras.Model:
    """The model, its variables placed by ``strategy``, its layers in the dtype ``policy`` (the logits
    and softmax stay float32: see `core.models.build_model`)."""
    with strategy.scope(), distribute.dtype_policy(policy):
        return build_model(config.arch, num_classes, size, weights=config.weights)


def float32_copy(model: keras.Model, config: TrainingConfig, num_classes: int, size) -> keras.Model:
    """The same network in float32 outside any strategy, with the trained weights: what is saved and
    explained (mixed precision and mirrored variables stay inside training)."""
    with distribute.dtype_policy("float32"):
        plain = build_model(config.arch, num_classes, size, weights=None)
    plain.set_weights(model.get_weights())
    return plain


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


def _phases(config: TrainingConfig, replicas: int = 1) -> list[tuple[int, float, float]]:
    """(epochs, learning rate, trainable share of the backbone) per phase. With pre-trained weights the
    backbone stays frozen first, then its top is fine-tuned; from scratch everything trains. The learning
    rate follows ``config.lr_rule`` for ``replicas``."""
    learning_rate = distribute.learning_rate_for(config.learning_rate, replicas, config.lr_rule)
    phases = [(config.epochs, learning_rate, 0.0 if config.weights else 1.0)]
    if config.fine_tune_epochs:
        fraction = config.fine_tune_fraction if config.weights else 1.0
        phases.append((config.fine_tune_epochs, learning_rate * config.fine_tune_lr_factor, fraction))
    return phases


# ---------------------------------------------------------------------------------------------------
# fit: one device or mirrored over several (Keras fit)


def _fit(
    run: runs.Run,
    model: keras.Model,
    index: data_lib.DatasetIndex,
    config: TrainingConfig,
    weights: dict[int, float] | None,
    progress: ProgressFn | None,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    placement: distribute.Placement,
    policy: str,
) -> tuple[RunRecorder | None, Inputs | None]:
    """Sets up the input pipeline and fits every phase; returns the recorder (None: cancelled while
    loading) and the inputs."""
    size = (config.image_size, config.image_size)
    if progress:
        count = int(index.records["split"].isin(["train", "val"]).sum())
        progress({"stage": "loading", "message": f"Reading the headers of {count} images"})
    global_batch = config.batch_size * placement.replicas
    cancelled = run.file(CANCEL_FILE).exists
    inputs = make_inputs(run.path.parent.parent, index, config, global_batch, cancelled)
    if inputs is None or cancelled():  # cancelled while the pipeline was set up
        return None, inputs
    recorder = RunRecorder(run, config.epochs + config.fine_tune_epochs, inputs.steps, progress)
    callbacks = [recorder, PassCounter(inputs.trackers), keras.callbacks.TerminateOnNaN()]
    if inputs.val is not None:
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                run.path / BEST_WEIGHTS_FILE, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6),
        ]
    callbacks.append(drift_callback(run, model, index, size, config, policy))
    callbacks += list(extra_callbacks)
    done = 0
    for epochs, learning_rate, trainable_fraction in _phases(config, placement.replicas):
        set_trainable_top(model, trainable_fraction)
        with placement.strategy.scope():
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
        with python_warnings.catch_warnings():  # the pipeline's length is known after one pass (files may be skipped)
            python_warnings.filterwarnings("ignore", message="Your input ran out of data")
            model.fit(
                inputs.train,
                validation_data=inputs.val,
                initial_epoch=done,
                epochs=done + epochs,
                callbacks=callbacks,
                class_weight=weights,
                shuffle=False,  # the pipeline shuffles
                verbose=0,
            )
        done = len(recorder.rows)
        if recorder.cancelled:  # early stopping ends a phase only: fine-tuning still follows
            break
    check_diverged(recorder, config)
    return recorder, inputs


def check_diverged(recorder: RunRecorder, config: TrainingConfig) -> None:
    if not recorder.cancelled and recorder.rows and not np.isfinite(recorder.rows[-1].get("loss", np.nan)):
        raise ValueError(
            f"Training diverged: the loss became NaN in epoch {len(recorder.rows)}. "
            f"Lower the learning rate (it was {config.learning_rate})."
        )


DRIFT_PROBES_PER_CLASS = 2
DRIFT_MAX_PROBES = 12


def drift_callback(
    run: runs.Run, model: keras.Model, index: data_lib.DatasetIndex, size, config: TrainingConfig, policy: str
) -> keras.callbacks.Callback:
    """Explanation drift: a few test images per class explained with Grad-CAM after every epoch (see
    `core.drift`); the Training page shows them as a film strip. Under mixed precision the maps are
    computed on a float32 copy of the model, its weights copied each epoch."""
    from core.drift import ExplanationDrift, probe_set

    probes = probe_set(index.split("test"), DRIFT_PROBES_PER_CLASS).head(DRIFT_MAX_PROBES)
    drift = ExplanationDrift(run.path, probes["path"], probes["label"], size, "gradcam")
    if policy == "float32":
        return drift
    return Float32View(drift, lambda trained: float32_copy(trained, config, len(index.class_names), size))


class Float32View(keras.callbacks.Callback):
    """Runs a callback's ``on_epoch_end`` on a float32 copy of the model (explanations stay float32)."""

    def __init__(self, inner: keras.callbacks.Callback, make_copy: Callable[[keras.Model], keras.Model]):
        super().__init__()
        self.inner, self.make_copy, self.copy = inner, make_copy, None

    def on_epoch_end(self, epoch, logs=None):
        if self.copy is None:
            self.copy = self.make_copy(self.model)
        else:
            self.copy.set_weights(self.model.get_weights())
        self.inner.set_model(self.copy)
        self.inner.on_epoch_end(epoch, logs)


def _finish(
    run: runs.Run,
    model: keras.Model,
    index: data_lib.DatasetIndex,
    recorder: RunRecorder,
    started: float,
    progress: ProgressFn | None,
    inputs: Inputs | None = None,
    config: TrainingConfig | None = None,
    policy: str = "float32",
    best_path: Path | None = None,
    **fields,
) -> runs.Run:
    """Best epoch's weights back, model saved (float32), test split evaluated, run marked complete."""
    best_path = best_path or run.path / BEST_WEIGHTS_FILE
    if config is not None and (policy != "float32" or _is_distributed(model)):
        model = float32_copy(model, config, len(index.class_names), tuple(run.meta["input_size"]))
    if best_path.exists():
        model.load_weights(best_path)  # the best epoch by validation loss
    train_seconds = time.monotonic() - started
    save_model_atomic(model, run.model_path)
    if progress:
        progress({"stage": "evaluating", "message": "Evaluating on the test split"})
    metrics = evaluate(run, model=model, index=index)
    if inputs is not None:
        fields["input_pipeline"] = inputs.summary()
    return complete_run(
        run,
        metrics,
        started,
        durations={"train_seconds": round(train_seconds, 2)},
        epochs_trained=len(recorder.rows),
        best_epoch=_best_epoch(recorder.rows),
        **fields,
    )


def _is_distributed(model: keras.Model) -> bool:
    """True when the model's variables are placed by a strategy other than the default one."""
    import tensorflow as tf

    return any(isinstance(v.value, tf.distribute.DistributedValues) for v in model.weights[:1])


def _best_epoch(rows: list[dict]) -> int | None:
    with_val = [r for r in rows if "val_loss" in r]
    return int(min(with_val, key=lambda r: r["val_loss"])["epoch"]) if with_val else None
