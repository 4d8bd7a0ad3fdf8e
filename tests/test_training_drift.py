"""Explanation drift is recorded by every training run and shown on the Training page as a film strip."""

from __future__ import annotations

import json

import numpy as np
from apptest import images, open_page

from core import drift, runs


def test_a_trained_run_records_one_map_per_probe_and_epoch(tiny_trained_run):
    report = drift.load_drift(tiny_trained_run)
    assert report is not None and report["method"] == "gradcam" and report["error"] is None
    epochs = tiny_trained_run.meta["epochs_trained"]
    assert report["epochs"] == list(range(1, epochs + 1))
    probes = len(report["paths"])
    assert probes == 2 * len(tiny_trained_run.class_names)  # two test images per class
    assert report["maps"].shape == (epochs, probes, 32, 32)
    assert report["maps"].min() >= 0.0 and report["maps"].max() <= 1.0
    test_paths = set(runs.load_predictions(tiny_trained_run)["path"])
    assert set(report["paths"]) <= test_paths  # probes come from the test split, never trained on
    saved = json.loads(tiny_trained_run.file(drift.DRIFT_FILE).read_text())
    assert [tiny_trained_run.class_names[i] for i in saved["class_indices"]] == [
        runs.load_predictions(tiny_trained_run).set_index("path").loc[p, "true_class"] for p in saved["paths"]
    ]


def test_film_strip_frames_keep_the_first_and_last_epoch():
    from ui.drift import frames

    assert frames(list(range(1, 6))) == [0, 1, 2, 3, 4]
    chosen = frames(list(range(1, 51)), limit=10)
    assert chosen[0] == 0 and chosen[-1] == 49 and len(chosen) == 10
    assert np.all(np.diff(chosen) > 0)


def test_training_page_shows_the_film_strip(app_workspace, monkeypatch):
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    run = runs.latest_complete_run(app_workspace)
    report = drift.load_drift(run)
    strip = [c for c in images(at) if str(getattr(c.proto.imgs[0], "caption", "")).startswith("epoch ")]
    assert len(strip) == len(report["paths"]) * len(report["epochs"])
