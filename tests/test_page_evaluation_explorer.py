"""AppTest of the evaluation explorer's tabs: calibration, thresholds, intervals, mistakes, drill-down."""

from __future__ import annotations

import json
import shutil

import pytest
from apptest import images, open_page, plots


@pytest.fixture
def workspace_copy(app_workspace, tmp_path):
    """A private copy of the app workspace: these tests save thresholds and temperatures into the run."""
    target = tmp_path / "ws"
    shutil.copytree(app_workspace, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def _table_with(at, column: str):
    """The first dataframe shown with ``column`` (AppTest does not expose a dataframe's key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _run_dir(workspace):
    return next(p for p in (workspace / "runs").iterdir() if (p / "run.json").exists())


def test_every_explorer_tab_renders_with_its_numbers(workspace_copy, monkeypatch):
    at = open_page("pages/3_Evaluation.py", workspace_copy, monkeypatch)
    labels = {m.label: m.value for m in at.metric}
    assert 0.0 <= float(labels["ECE (15 bins)"]) <= 1.0
    assert 0.0 <= float(labels["Brier score"]) <= 2.0
    assert "ECE after temperature scaling" in labels  # the run has validation predictions to fit on
    accuracy = [m for m in at.metric if m.label == "Accuracy"][0]
    assert "95% interval [" in accuracy.proto.delta
    figures = plots(at)
    reliability = [f for f in figures if any(t.get("name") == "perfect calibration" for t in f["data"])]
    assert len(reliability) == 1
    names = {t.get("name", "") for t in reliability[0]["data"]}
    assert any(n.startswith("model (ECE") for n in names) and any(n.startswith("after temperature") for n in names)
    assert _table_with(at, "top-k accuracy")["k"].tolist() == ["1", "2"]
    ranked = [d.value for d in at.dataframe if "thumbnail" in d.value.columns]
    assert ranked and sum(len(t) for t in ranked) > 0
    assert all(t["thumbnail"].str.startswith("data:image/png;base64,").all() for t in ranked)


def test_saving_a_threshold_and_a_temperature_writes_them_into_the_run(workspace_copy, monkeypatch):
    at = open_page("pages/3_Evaluation.py", workspace_copy, monkeypatch)
    at.selectbox(key="threshold_class").select("square").run()
    at.slider(key="threshold_value_square").set_value(0.2).run()
    counts = _table_with(at, "predicted square")
    assert int(counts.to_numpy().sum()) == int([m for m in at.metric if m.label == "Test images"][0].value)
    at.button(key="save_threshold").click().run()
    assert not at.exception
    saved = json.loads((_run_dir(workspace_copy) / "threshold.json").read_text())
    assert saved == {"class": "square", "threshold": 0.2}
    assert any("every page predicts **square**" in s.value for s in at.success)
    at.button(key="save_calibration").click().run()
    calibration = json.loads((_run_dir(workspace_copy) / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and calibration["fitted_on"] == "validation split"
    at.button(key="clear_threshold").click().run()
    assert not (_run_dir(workspace_copy) / "threshold.json").exists()


def test_confusion_drill_down_shows_maps_for_both_classes(workspace_copy, monkeypatch):
    at = open_page("pages/3_Evaluation.py", workspace_copy, monkeypatch)
    before = len(images(at))
    true_class, predicted = at.selectbox(key="drill_true").value, at.selectbox(key="drill_pred").value
    assert any(f"of **{true_class}** predicted **{predicted}**" in c.value for c in at.caption)  # the default cell
    at.toggle(key="drill_explain").set_value(True).run()
    assert not at.exception and not at.error
    # per image: the image, then Grad-CAM for the true class and for the predicted class
    added = len(images(at)) - before
    assert added >= 3 and added % 3 == 0
