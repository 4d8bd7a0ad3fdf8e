"""Explanation drift during training: a fixed probe set (a few test images per class) explained after every
epoch by a Keras callback and saved with the run, so a page can show each probe's map per epoch as a film
strip.

    callback = ExplanationDrift(run.path, probe_paths, probe_classes, (h, w), method="gradcam")
    model.fit(..., callbacks=[..., callback])

Files in the run: ``drift.json`` (method, probe paths and classes, epochs done) and ``drift.npz`` (``maps``:
float16 (epochs, probes, H, W) in [0, 1]), both rewritten atomically after every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from core import runs

DRIFT_FILE = "drift.json"
DRIFT_MAPS_FILE = "drift.npz"


def probe_set(split, per_class: int = 2):
    """The first ``per_class`` images of each class of a split frame (path, class_name, label): the probes."""
    return split.groupby("class_name", sort=False).head(per_class).reset_index(drop=True)


class ExplanationDrift(keras.callbacks.Callback):
    """Explains the probe images after every epoch with ``method`` and saves the maps in ``run_path``.

    Args:
        run_path: the run folder.
        paths: the probe images' files.
        class_indices: the class each probe is explained for (its true class).
        size: the model's (height, width).
        method: a name in `core.explain.METHODS`; ``params`` its parameters.
    """

    def __init__(self, run_path, paths, class_indices, size, method: str = "gradcam", params: dict | None = None):
        super().__init__()
        from core.data import load_images

        self.run_path = Path(run_path)
        self.paths = [str(p) for p in paths]
        self.classes = [int(c) for c in class_indices]
        self.images = load_images(self.paths, tuple(size))
        self.method = method
        self.method_params = dict(params or {})
        self.maps: list[np.ndarray] = []
        self.epochs: list[int] = []
        self.error: str | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.error is not None or not self.paths:
            return
        from core.explain import explain

        try:
            maps = explain(self.model, self.images, self.method, class_index=self.classes, **self.method_params)
        except Exception as exc:  # a method that cannot apply must not stop the training
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.maps.append(maps.astype(np.float16))
            self.epochs.append(int(epoch) + 1)
        self.save()

    def save(self) -> None:
        from core.visualize import npz_bytes

        if self.maps:
            runs.atomic_write_bytes(self.run_path / DRIFT_MAPS_FILE, npz_bytes({"maps": np.stack(self.maps)}))
        runs.atomic_write_json(
            self.run_path / DRIFT_FILE,
            {
                "method": self.method,
                "params": self.method_params,
                "paths": self.paths,
                "class_indices": self.classes,
                "epochs": self.epochs,
                "error": self.error,
            },
        )


def load_drift(run: runs.Run) -> dict | None:
    """The saved drift (``maps`` as float32 (epochs, probes, H, W)), or None when the run has none."""
    try:
        report = json.loads(run.file(DRIFT_FILE).read_text("utf-8"))
        with np.load(run.file(DRIFT_MAPS_FILE)) as saved:
            report["maps"] = saved["maps"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None
    return report
