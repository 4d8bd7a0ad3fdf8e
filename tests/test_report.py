"""The shareable HTML report: self-contained (no network URL), and it renders from disk in Chromium."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from browser import browser_page
from conftest import ARTIFACTS

from core import report, runs

NETWORK_REFERENCE = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""", re.I
)


@pytest.fixture(scope="module")
def report_file(tiny_trained_run, tmp_path_factory):
    """The report of a copy of the tiny run, given trust.json and audit.json results."""
    folder = tmp_path_factory.mktemp("report_ws")
    target = runs.runs_dir(folder) / tiny_trained_run.id
    shutil.copytree(tiny_trained_run.path, target)
    runs.atomic_write_json(target / "trust.json", {"deletion_auc": {"gradcam": 0.123456}, "steps": 20})
    runs.atomic_write_json(target / "audit.json", {"classes": {"circle": {"mean_energy_in_border": 0.31}}})
    run = runs.read_run(target)
    out = report.write_report(run, folder / "report.html", methods=["gradcam", "vanilla_gradients"], per_class=2)
    return run, out


def test_report_is_self_contained_and_complete(report_file):
    run, out = report_file
    text = out.read_text("utf-8")
    assert text.count("<script") == 1 + 5  # plotly.js once, then one script per figure (5)
    outside_plotly = re.sub(r"<script id='plotlyjs'.*?</script>", "", text, flags=re.S)
    assert len(outside_plotly) < len(text) - 1_000_000  # the inlined plotly.js is gone from this copy
    assert not NETWORK_REFERENCE.findall(outside_plotly)
    assert not re.findall(r"https?://", outside_plotly)
    for div in ("dataset_plot", "curve_loss", "curve_accuracy", "confusion_plot", "roc_plot"):
        assert f'id="{div}"' in text
    images = re.findall(r"<img src='(data:image/png;base64,[^']+)'", text)
    assert len(images) == 3 * 2 * (1 + 2)  # 3 classes x 2 images x (image + 2 methods)
    assert "0.1235" in text and "mean_energy_in_border" in text  # trust and audit results, as tables
    assert f"{run.meta['test_accuracy']:.3f}" in text
    for name in run.class_names:
        assert f"true {name}" in text


def test_report_refuses_bad_requests(report_file, tmp_path):
    run, _ = report_file
    with pytest.raises(report.ReportError, match="Unknown explanation methods"):
        report.build_report(run, methods=["magic"])
    broken = runs.Run(run.path, {**run.meta, "status": "failed"})
    with pytest.raises(report.ReportError, match="failed"):
        report.build_report(broken)


def test_report_renders_offline_in_chromium(report_file):
    _, out = report_file
    requests = []
    with browser_page(1300, 1000) as page:
        page.on("request", lambda request: requests.append(request.url))
        page.goto(out.as_uri())
        page.wait_for_selector("#roc_plot .main-svg", timeout=30_000)
        plotted = page.evaluate(
            "() => ['dataset_plot','curve_loss','curve_accuracy','confusion_plot','roc_plot'].map("
            "id => document.querySelectorAll('#' + id + ' .main-svg').length)"
        )
        assert all(n >= 1 for n in plotted), plotted
        traces = page.evaluate("() => document.querySelectorAll('#roc_plot .scatterlayer .trace').length")
        assert traces == 3 + 1  # one curve per class and the chance diagonal
        loaded = page.evaluate("() => [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        assert loaded == 18
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert all(url.startswith(("file:", "data:")) for url in requests), [u for u in requests if "data:" not in u]
    assert json.dumps(requests).count("http") == 0
