"""AppTest of the Evaluation page against a small prepared run."""

from __future__ import annotations

import pytest
from apptest import open_page, plots


def test_evaluation_page(app_workspace, monkeypatch):
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    from core import runs

    at = open_page("pages/3_Evaluation.py", app_workspace, monkeypatch)
    report = at.table[0].value
    assert list(report.index) == ["circle", "square", "triangle", "accuracy", "macro avg", "weighted avg"]
    metrics = runs.load_metrics(runs.latest_complete_run(app_workspace))
    assert report.loc["accuracy", "f1"] == pytest.approx(metrics["accuracy"])
    shown = convert_arrow_bytes_to_pandas_df(at.table[0].proto.arrow_data.styler.display_values)
    assert shown.loc["accuracy"].tolist() == ["", "", f"{metrics['accuracy']:.3f}", str(metrics["n_samples"])]
    assert not shown.isin(["None", "nan", "NaN"]).any().any()
    counts, normalized, roc, pr = plots(at)[:4]  # the Report tab comes first
    assert counts["data"][0]["type"] == "heatmap" and normalized["data"][0]["type"] == "heatmap"
    classes = [t for t in roc["data"] if t["name"] != "chance"]
    assert len(classes) == 3 and all("AUC" in t["name"] for t in classes)
    assert len({(t["line"]["dash"], t["marker"]["symbol"]) for t in classes}) == 3  # each class drawn its own way
    assert len(pr["data"]) == 3


def test_identical_roc_curves_stay_distinguishable():
    """A perfect classifier draws every class's ROC curve along the same corner: none may hide another."""
    import numpy as np

    from core.charts import pr_figure, roc_figure

    perfect = {name: {"fpr": np.array([0, 0, 1.0]), "tpr": np.array([0, 1, 1.0]), "auc": 1.0} for name in "abcd"}
    traces = [t for t in roc_figure(perfect).data if t.name != "chance"]
    assert [t.name for t in traces] == [f"{n} (AUC 1.000)" for n in "abcd"]
    assert len({t.line.dash for t in traces}) == 4 and len({t.marker.symbol for t in traces}) == 4
    assert len({t.line.color for t in traces}) == 4 and all("markers" in t.mode for t in traces)
    widths = [t.line.width for t in traces]
    assert widths[0] > widths[1] > widths[2]  # wider lines underneath: the ones on top leave them visible
    curves = {
        n: {"recall": np.array([1.0, 0]), "precision": np.array([1.0, 1]), "average_precision": 1.0} for n in "ab"
    }
    assert len({t.line.dash for t in pr_figure(curves).data}) == 2


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


def test_the_report_is_built_and_downloaded_from_the_page(app_workspace, monkeypatch):
    at = open_page("pages/3_Evaluation.py", app_workspace, monkeypatch)
    assert not [b for b in at.get("download_button") if b.proto.id.endswith("report_download")]
    at.multiselect(key="report_methods").set_value(["gradcam"])
    at.number_input(key="report_per_class").set_value(1)
    at.button(key="report_build").click().run()
    assert not at.exception and not at.error
    (button,) = [b for b in at.get("download_button") if b.proto.id.endswith("report_download")]
    assert "gradcam" in button.proto.label and button.proto.label.startswith("Download report.html (")
    run_id, methods, html = at.session_state["built_report"]
    assert methods == ["gradcam"] and html.lstrip().lower().startswith("<!doctype html")
    assert html.count("data:image/png;base64,") >= 3  # one explained image per class, at least
