"""AppTest of the evaluation explorer's tabs: calibration, thresholds, intervals, mistakes, drill-down."""

from __future__ import annotations

import json
import shutil

import pytest
from apptest import images, open_page, plots
from streamlit.proto.Metric_pb2 import Metric as MetricProto


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
    # the run has validation predictions to fit on: the delta is the change in ECE, lower is better
    (after,) = [m for m in at.metric if m.label.startswith("ECE after temperature scaling (T = ")]
    assert float(after.label.split("T = ")[1].rstrip(")")) > 0
    change = float(after.proto.delta)
    assert abs(change - (float(after.value) - float(labels["ECE (15 bins)"]))) <= 0.0015
    colour, direction = after.proto.color, after.proto.direction
    if change < 0:  # ECE went down: an improvement, green, arrow down
        assert (colour, direction) == (MetricProto.MetricColor.GREEN, MetricProto.MetricDirection.DOWN)
    elif change > 0:
        assert (colour, direction) == (MetricProto.MetricColor.RED, MetricProto.MetricDirection.UP)
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


def _drill_keys(workspace) -> tuple[str, str]:
    run_id = _run_dir(workspace).name
    return f"drill_true_{run_id}", f"drill_pred_{run_id}"


def test_confusion_drill_down_shows_images_then_maps_for_both_classes(workspace_copy, monkeypatch):
    at = open_page("pages/3_Evaluation.py", workspace_copy, monkeypatch)
    true_key, pred_key = _drill_keys(workspace_copy)
    true_class, predicted = at.selectbox(key=true_key).value, at.selectbox(key=pred_key).value
    (caption,) = [c.value for c in at.caption if f"of **{true_class}** predicted **{predicted}**" in c.value]
    count = int(caption.split()[0])
    # the cell's images straight away (at most 8, the most confident first), before any map is asked for
    (thumbnails,) = [el for el in images(at) if all(i.caption.startswith(f"{predicted} ") for i in el.proto.imgs)]
    assert len(thumbnails.proto.imgs) == min(count, 8)
    confidences = [float(img.caption.rsplit(" ", 1)[1]) for img in thumbnails.proto.imgs]
    assert confidences == sorted(confidences, reverse=True)
    assert ("most confident are shown" in caption) == (count > 8)
    before = len(images(at))
    at.toggle(key="drill_explain").set_value(True).run()
    assert not at.exception and not at.error
    # per image: the image, then Grad-CAM for the true class and for the predicted class (the same width: the
    # browser test looks; AppTest does not keep an image's width)
    rows = [el for el in images(at) if el.proto.imgs[0].caption.endswith(("image", "(true)", "(predicted)"))]
    assert len(rows) == 3 * min(count, 8) and len(images(at)) == before - 1 + len(rows)


def test_confusion_drill_down_starts_at_the_largest_confusion_of_each_run(workspace_copy, monkeypatch):
    import pandas as pd

    first = _run_dir(workspace_copy)
    second = first.parent / "zz-second-run"
    shutil.copytree(first, second)
    frame = pd.read_csv(second / "predictions.csv")
    names = sorted(frame["true_class"].unique())
    # the second run's largest confusion: every circle predicted square
    frame.loc[frame["true_class"] == names[0], "pred_class"] = names[1]
    frame.to_csv(second / "predictions.csv", index=False)

    at = open_page("pages/3_Evaluation.py", workspace_copy, monkeypatch)
    at.selectbox(key="run_picker").select(first.name).run()
    true_key, pred_key = f"drill_true_{first.name}", f"drill_pred_{first.name}"
    at.selectbox(key=true_key).select(names[2]).run()
    at.selectbox(key=pred_key).select(names[2]).run()  # a diagonal cell, picked by hand
    at.selectbox(key="run_picker").select(second.name).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key=f"drill_true_{second.name}").value == names[0]
    assert at.selectbox(key=f"drill_pred_{second.name}").value == names[1]
