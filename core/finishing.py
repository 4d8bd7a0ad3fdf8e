"""Finishing a run, shared by training (`core.training`) and importing a model: the recorded splits, the
model saved atomically, the evaluation on the test split, and the last fields of run.json.

A run ends in exactly one of two ways:
    `complete_run(run, metrics, started, ...)`   status complete, finished_at, durations, test metrics
    `stop_run(run, exc)`                         status failed (or cancelled), the error and its traceback
and nothing else writes those fields. Data flows one way: this module imports the model loader, never
the other way round.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core import data as data_lib
from core import evaluation, explorer, runs
from core.model_import import load_run_model
from core.models import input_size, predict_proba

if TYPE_CHECKING:
    import keras

SPLITS_FILE = "splits.csv"
TMP_MODEL_PREFIX = ".tmp-"  # save_model_atomic's temporary files: .tmp-model-<ns>.keras


def save_splits(run: runs.Run, index: data_lib.DatasetIndex) -> None:
    """Records which file went to which split, so evaluation and pages use exactly the training split."""
    columns = ["path", "split", "class_name", "label"]
    runs.atomic_write_csv(run.file(SPLITS_FILE), index.records[columns])


def test_split_of(run: runs.Run) -> pd.DataFrame:
    """The run's test split: as recorded at training time, or (older and imported runs) scanned again.

    Raises:
        RunError: the recorded splits.csv cannot be read.
        DatasetError: the dataset must be scanned again and cannot be.
    """
    recorded = run.file(SPLITS_FILE)
    if recorded.exists():
        try:
            splits = pd.read_csv(recorded, dtype={"path": str, "split": str, "class_name": str}, keep_default_na=False)
            missing = {"path", "split", "class_name"} - set(splits.columns)
            if missing:
                raise ValueError(f"it has no column {sorted(missing)}")
            test = splits[splits["split"] == "test"].reset_index(drop=True)
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            raise runs.RunError(f"The {SPLITS_FILE} of run {run.id} cannot be read: {exc}") from exc
        return test
    hp = run.meta.get("hyperparameters") or {}
    index = data_lib.scan_dataset(
        run.meta["dataset"],
        hp.get("val_fraction", 0.15),
        hp.get("test_fraction", 0.15),
        seed=run.meta.get("seed", 0),
        group_split=hp.get("group_split", False),
    )
    return index.split("test")


def save_model_atomic(model: keras.Model, path: str | os.PathLike) -> None:
    """Saves to a temporary ``.tmp-<name>-<ns>.keras`` file beside ``path``, then renames it into place.

    A process killed in the middle leaves the temporary file behind: `runs.clean_leftovers` removes it
    once the run is known dead, and nothing counts it as a model.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_MODEL_PREFIX}{path.stem}-{time.time_ns()}.keras")
    try:
        model.save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_test_images(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """The test images as one float32 batch; an image that is gone or unreadable is named in the error."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise data_lib.ImageError(
            f"{len(missing)} test image(s) of the run no longer exist: {', '.join(missing[:3])}{more}. "
            "Restore them, or train or import the model again on the dataset as it is now."
        )
    batch = np.zeros((len(paths), size[0], size[1], 3), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            batch[i] = data_lib.load_image(path, size)
        except (data_lib.ImageError, OSError) as exc:
            raise data_lib.ImageError(f"The test image {path} cannot be read: {exc}") from exc
    return batch


def predict_files(model: keras.Model, paths: list[str], size: tuple[int, int], batch_size: int = 64) -> np.ndarray:
    """Class probabilities of image files, decoded in parallel by the tf.data pipeline (`core.pipeline`,
    the pixels `core.data.load_image` gives) while the model predicts the previous batch.

    Raises:
        ImageError: a file is gone or cannot be read (the message names it).
    """
    from core import pipeline

    if any(not os.path.isfile(p) for p in paths):
        _load_test_images(paths, size)  # raises, naming the missing files
    try:
        batches = [
            predict_proba(model, images, batch_size) for images in pipeline.image_batches(paths, size, batch_size)
        ]
    except data_lib.ImageError as exc:
        path, reason = getattr(exc, "path", None), getattr(exc, "reason", str(exc))
        raise data_lib.ImageError(f"The test image {path} cannot be read: {reason}") from exc
    return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)


def check_class_names(run: runs.Run, num_outputs: int) -> list[str]:
    """The run's class names, checked against the number of classes its model predicts.

    Raises:
        RunError: the names are missing, repeated, not text, or not one per model output.
    """
    names = run.meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise runs.RunError(
            f"Run {run.id}: its run.json has no usable class_names (expected a list of {num_outputs} class "
            f"names in the model's output order). Received: class_names={names!r}"
        )
    if len(set(names)) != len(names):
        raise runs.RunError(f"Run {run.id}: its class_names repeat a name. Received: class_names={names!r}")
    if len(names) != num_outputs:
        raise runs.RunError(
            f"Run {run.id}: its model predicts {num_outputs} classes but run.json names {len(names)} "
            f"({', '.join(names)}). Fix class_names in {run.file(runs.RUN_FILE)}."
        )
    return list(names)


def evaluate(
    run: runs.Run, model: keras.Model | None = None, index: data_lib.DatasetIndex | None = None, batch_size: int = 64
) -> dict:
    """Predicts the run's test split; writes predictions.csv and metrics.json; returns the metrics.

    Args:
        run: the run whose model and test split are used.
        model: the run's model, if already loaded (else it is loaded from the run folder).
        index: the scanned dataset, if at hand (else the split recorded in splits.csv).
        batch_size: images per forward pass.

    Raises:
        DatasetError: the test split is empty, or holds a class the run does not know.
        ImageError: a test image is gone or can no longer be read (the error names it).
        RunError: the run's class_names are missing or do not match the model.
    """
    if model is None:
        model = load_run_model(run.path)
    test = index.split("test") if index is not None else test_split_of(run)
    if not len(test):
        raise data_lib.DatasetError(f"The dataset {run.meta.get('dataset')} has no test images to evaluate on.")
    size = input_size(model)
    paths = list(test["path"])
    first = predict_proba(model, _load_test_images(paths[:1], size))
    class_names = check_class_names(run, int(first.shape[1]))
    order = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(test["class_name"]) - set(order))
    if unknown:
        raise data_lib.DatasetError(
            f"The test split holds classes the model does not know: {unknown}. The model knows {class_names}."
        )
    labels = [order[c] for c in test["class_name"]]  # the model's output order, which may differ from the folders'
    probs = predict_files(model, paths, size, batch_size)
    predictions = evaluation.predictions_frame(paths, labels, probs, class_names)
    metrics = evaluation.compute_metrics(predictions)
    metrics.update(explorer.extended_metrics(predictions))  # ECE, Brier, bootstrap intervals, top-k
    _write_val_predictions(run, model, index, class_names, size, batch_size)
    runs.atomic_write_csv(run.file(runs.PREDICTIONS_FILE), predictions)
    runs.atomic_write_json(run.file(runs.METRICS_FILE), metrics)
    return metrics


def _write_val_predictions(run: runs.Run, model, index, class_names, size, batch_size: int) -> None:
    """Predicts the validation split into val_predictions.csv (temperature scaling is fitted on it). A run
    without a validation split, or whose validation images cannot all be read any more, gets none."""
    target = run.file(explorer.VAL_PREDICTIONS_FILE)
    if index is not None:
        val = index.split("val")
    else:
        try:
            splits = pd.read_csv(
                run.file(SPLITS_FILE), dtype={"path": str, "split": str, "class_name": str}, keep_default_na=False
            )
            val = splits[splits["split"] == "val"]
        except (OSError, ValueError, KeyError):
            val = pd.DataFrame(columns=["path", "class_name"])
    order = {c: i for i, c in enumerate(class_names)}
    val = val[val["class_name"].isin(order)]
    if not len(val):
        target.unlink(missing_ok=True)
        return
    paths = list(val["path"])
    try:
        probs = predict_files(model, paths, size, batch_size)
    except data_lib.ImageError:
        target.unlink(missing_ok=True)
        return
    frame = evaluation.predictions_frame(paths, [order[c] for c in val["class_name"]], probs, class_names)
    runs.atomic_write_csv(target, frame)


def complete_run(run: runs.Run, metrics: dict, started: float, **fields) -> runs.Run:
    """Marks a run complete: finished_at, durations (``total_seconds`` since ``started``, a
    `time.monotonic()` value, merged with any ``durations`` given), test accuracy and macro ROC AUC,
    and any other ``fields`` (epochs_trained, say)."""
    durations = {**(fields.pop("durations", None) or {}), "total_seconds": round(time.monotonic() - started, 2)}
    return runs.update_run(
        run,
        status=runs.COMPLETE,
        finished_at=runs.utc_now(),
        durations=durations,
        test_accuracy=metrics["accuracy"],
        roc_auc_macro=metrics["roc_auc_macro"],
        **fields,
    )


def stop_run(run: runs.Run, exc: BaseException | None = None, reason: str | None = None) -> runs.Run:
    """Marks a run that did not complete: ``cancelled`` for a KeyboardInterrupt (or ``reason`` given with
    no exception), else ``failed`` with ``"<ErrorType>: <message>"`` and the traceback; leftovers of the
    model save (temporary model file, best-epoch weights) are removed."""
    runs.clean_leftovers(run.path)
    if exc is None:
        return runs.mark_stopped(run, reason or "Cancelled by the user.", status=runs.CANCELLED)
    if isinstance(exc, KeyboardInterrupt):
        return runs.mark_stopped(run, reason or "Interrupted.", status=runs.CANCELLED)
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=20))
    runs.update_run(run, traceback=details)
    return runs.mark_stopped(run, reason or f"{type(exc).__name__}: {exc}")
