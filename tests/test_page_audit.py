"""AppTest of the Audit page: the audit with its flags, mean maps, shares, counterfactual table and method
agreement; the Trust section with its table, curves, verdicts and cascade strips; both saved in the run."""

from __future__ import annotations

import json
import shutil

import pytest
from apptest import images, open_page, plots

from ui import audit as ui_audit

PAGE = "pages/7_Audit.py"


@pytest.fixture
def workspace(app_workspace, tmp_path):
    """A private copy of the shared app workspace (the page writes audit.json and trust.json into the run)."""
    target = tmp_path / "ws"
    shutil.copytree(app_workspace, target)
    return target


def test_audit_page_runs_the_audit_and_scores_methods(workspace, monkeypatch):
    from core import runs
    from core.explain import METHODS, describe

    at = open_page(PAGE, workspace, monkeypatch)
    assert any("No audit of this run yet" in info.value for info in at.info)
    run = runs.latest_complete_run(workspace)

    at.selectbox(key="audit_method").select("vanilla_gradients")
    at.number_input(key="audit_limit").set_value(6)
    at.number_input(key="audit_agreement").set_value(3)
    at.button(key="audit_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (run.path / "audit.json").is_file()
    assert any("No class is flagged" in s.value for s in at.success)
    text = " ".join(m.value for m in at.markdown)
    assert "on **6** test images" in text and all(f"{c}: not flagged" in text for c in run.class_names)
    assert len(images(at)) >= len(run.class_names)  # one mean map per class
    figures = plots(at)
    bars = [f for f in figures if any(t.get("type") == "bar" for t in f["data"])]
    assert len(bars) == 1 and {t["name"] for t in bars[0]["data"]} >= set(run.class_names) | {"uniform map"}
    heatmaps = [f for f in figures if f["data"][0].get("type") == "heatmap"]
    assert len(heatmaps) == 1 and len(heatmaps[0]["data"][0]["x"]) >= 3  # every method that applies
    titles = {describe(m)["title"] for m in METHODS}
    agreement = heatmaps[0]["data"][0]
    assert set(agreement["x"]) <= titles and agreement["x"] == agreement["y"]  # titles, not internal ids
    assert "Grad-CAM" in agreement["x"] and not any("_" in name for name in agreement["x"])
    # each class's sentence names a region by the chart's label, with the share its bar shows
    bar_labels = bars[0]["data"][0]["x"]
    saved = json.loads((run.path / "audit.json").read_text())
    for entry in saved["classes"].values():
        label = ui_audit.REGION_LABELS[entry["candidate_region"]]
        assert label in bar_labels and f"{entry['share']:.0%} of its map mass lies in the {label}" in text
    table = at.dataframe[0].value
    assert list(table["class"]) == run.class_names and table["accuracy before"].between(0, 1).all()

    at.multiselect(key="trust_methods").set_value(["vanilla_gradients", "gradcam"])
    at.number_input(key="trust_limit").set_value(3)
    at.number_input(key="trust_sanity").set_value(1)
    at.button(key="trust_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (run.path / "trust.json").is_file()
    trust = at.dataframe[1].value
    assert sorted(trust["method"]) == ["gradcam", "vanilla_gradients"]
    assert trust["deletion AUC (lower better)"].between(0, 1).all()
    assert trust["pointing game"].notna().all()  # the demo dataset has masks
    verdicts = [e.value for e in at.success] + [e.value for e in at.error]
    assert sum(("passes" in v or "fails" in v) for v in verdicts) == 2
    curves = [
        f
        for f in plots(at)
        if f["layout"].get("xaxis", {}).get("title", {}).get("text") == "fraction of pixels changed"
    ]
    assert len(curves) == 2 and len(curves[0]["data"]) == 4

    saved = json.loads((run.path / "audit.json").read_text())  # an audit saved with older words
    for entry in saved["classes"].values():
        entry["text"] = "old words: its most concentrated border or corner region holds 3%"
    (run.path / "audit.json").write_text(json.dumps(saved))
    reopened = open_page(PAGE, workspace, monkeypatch)  # saved results are shown again without recomputing
    assert not any("old words" in m.value for m in reopened.markdown)
    assert all(any(m.value.startswith(f"{c}: not flagged. Of the") for m in reopened.markdown) for c in run.class_names)
    assert reopened.dataframe[1].value.shape[0] == 2
    assert any("No class is flagged" in s.value for s in reopened.success)
