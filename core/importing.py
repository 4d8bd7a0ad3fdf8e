"""Importing a model the user trained as a run: everything is checked first, then the run is created.

The order is the point: the dataset is scanned, the class names checked, and the model file checked
(archive sizes, configuration, weights) and loaded, wrapped for pixels and matched against the classes,
all before a run folder exists. Only then is the run created, the model saved into it (or a SavedModel
copied), and the test split evaluated; an import that fails after that point removes its folder, so a
failed import never leaves a run behind.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from core import data as data_lib
from core import finishing, locks, runs, system
from core.model_import import PREPROCESSING_FILE, load_user_model, wrap_for_pixels
from core.models import ModelError, input_size


def _class_order(index: data_lib.DatasetIndex, class_names) -> list[str]:
    if not class_names:
        return list(index.class_names)
    names = [str(c).strip() for c in class_names]
    if sorted(names) != sorted(index.class_names):
        raise ValueError(f"--class-names {names} do not match the dataset's class folders {index.class_names}")
    return names


def discard_run(run: runs.Run) -> None:
    """Removes a run folder that must not stay (a failed import): hidden first, so no listing sees it
    half-deleted, then deleted; the lock this process held for it is released."""
    locks.release(run.path / runs.LOCK_FILE)
    hidden = run.path.with_name(f".discarded-{run.id}")
    try:
        os.replace(run.path, hidden)
    except OSError:
        hidden = run.path
    shutil.rmtree(hidden, ignore_errors=True)


def import_run(
    workspace: str | os.PathLike,
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    preprocess: str,
    class_names: list[str] | None = None,
    name: str | None = None,
    seed: int = 0,
    source_name: str | None = None,
) -> runs.Run:
    """Creates a complete run from a model the user trained, evaluated on the dataset's test split.

    Args:
        workspace: the workspace whose runs/ folder receives the run.
        model_path: a ``.keras`` or ``.h5`` file, or a SavedModel folder.
        data_dir: the image folder with the classes the model predicts.
        preprocess: what the model expects (see `core.models.PREPROCESSING_MODES`).
        class_names: the model's output order; by default the dataset's class folders, sorted.
        name: the run's name (default ``imported-<file stem>``).
        seed: the split's seed when the dataset has no test folder.
        source_name: what to record as the model's origin instead of its path (an upload's original
            file name: the file itself is a temporary copy).

    Raises:
        ModelError: the model is unsafe, too large, unreadable or does not fit the data (no run is created).
        DatasetError, ImageError: the dataset cannot be used (no run is created), or a test image cannot
            be read during the evaluation (the run is removed again).
        ValueError: ``class_names`` do not match the dataset's class folders.
    """
    model_path = Path(model_path)
    index = data_lib.scan_dataset(data_dir, seed=seed)
    class_names = _class_order(index, class_names)
    if index.split("test").empty:
        raise data_lib.DatasetError(f"The dataset {data_dir} has no test images to evaluate the model on.")
    # Checked and loaded from the user's own path: any message names that path, and no run exists yet.
    model = wrap_for_pixels(load_user_model(model_path), preprocess, len(class_names))
    savedmodel = model_path.is_dir()
    meta = {
        "name": name or f"imported-{model_path.stem}",
        "source": "imported",
        "imported_from": source_name or str(model_path.resolve()),
        "dataset": str(Path(data_dir).resolve()),
        "class_names": list(class_names),
        "architecture": "imported",
        "preprocessing": preprocess,
        "input_size": list(input_size(model)),
        "seed": seed,
        "library_versions": system.library_versions(),
        "split_counts": {s: int((index.records["split"] == s).sum()) for s in data_lib.SPLITS},
    }
    started = time.monotonic()
    run = runs.create_run(workspace, meta["name"], meta)
    try:
        finishing.save_splits(run, index)
        if savedmodel:  # copied into the run, checked again and loaded from the copy (see load_run_model)
            model = wrap_for_pixels(load_user_model(model_path, workdir=run.path), preprocess, len(class_names))
            runs.atomic_write_json(
                run.file(PREPROCESSING_FILE), {"preprocess": preprocess, "num_classes": len(class_names)}
            )
        else:
            finishing.save_model_atomic(model, run.model_path)
        metrics = finishing.evaluate(run, model=model, index=index)
        return finishing.complete_run(run, metrics, started)
    except BaseException as exc:
        discard_run(run)
        if isinstance(exc, (ModelError, data_lib.DatasetError, data_lib.ImageError, runs.RunError)) or not isinstance(
            exc, Exception
        ):
            raise
        raise ModelError(f"The model could not be imported: {type(exc).__name__}: {exc}") from exc
