"""AppTest of the Evaluation page against a small prepared run."""

from __future__ import annotations

import pytest
from apptest import open_page, plots


def test_evaluation_page(app_workspace, monkeypatch):
    from core import runs

    at = open_page("pages/3_Evaluation.py", app_workspace, monkeypatch)
    report = at.dataframe[0].value
    assert list(report.index) == ["circle", "square", "triangle", "accuracy", "macro avg", "weighted avg"]
    metrics = runs.load_metrics(runs.latest_complete_run(app_workspace))
    assert report.loc["accuracy", "f1"] == pytest.approx(metrics["accuracy"])
    counts, normalized, roc, pr = plots(at)
    assert counts["data"][0]["type"] == "heatmap" and normalized["data"][0]["type"] == "heatmap"
    assert len([t for t in roc["data"] if t["name"] != "chance"]) == 3
    assert all("AUC" in t["name"] for t in roc["data"] if t["name"] != "chance")
    assert len(pr["data"]) == 3


def test_evaluation_page_shows_new_metrics_after_re_evaluation(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    at = open_page("pages/3_Evaluation.py", workspace, monkeypatch)
    run = runs.latest_complete_run(workspace)
    metrics = runs.load_metrics(run)
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == f"{metrics['accuracy']:.3f}"
    runs.atomic_write_json(run.file(runs.METRICS_FILE), {**metrics, "accuracy": 0.123})  # as `core evaluate` would
    at = open_page("pages/3_Evaluation.py", workspace, monkeypatch)
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == "0.123"
