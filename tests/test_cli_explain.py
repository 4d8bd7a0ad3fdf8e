"""`python -m core explain`: maps, overlays and a report per image; every argument checked first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import cli, run_main

from core import runs


def test_explain_writes_maps_overlays_and_a_report(copied_run, tmp_path):
    from PIL import Image

    image = runs.load_predictions(copied_run)["path"].iloc[0]
    out = tmp_path / "out"
    result = cli(
        "explain", copied_run.id, "--image", image, "--methods", "gradcam", "--out", out,
        "--class-name", "square", "--workspace", copied_run.path.parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "explanation.json").read_text())
    assert json.loads(result.stdout) == report
    assert report["run"] == copied_run.id
    assert report["target_class"] == "square"
    assert set(report["probabilities"]) == {"circle", "square", "triangle"}
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["predicted_class"] == max(report["probabilities"], key=report["probabilities"].get)
    entry = report["methods"]["gradcam"]
    assert "error" not in entry and entry["seconds"] >= 0
    saliency = np.load(out / entry["map"])
    assert saliency.shape == (32, 32) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert Image.open(out / entry["overlay"]).size == (32, 32)
    assert Image.open(out / "gradcam_heatmap.png").size == (32, 32)
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "input.png")), np.asarray(Image.open(image).convert("RGB"))
    )


def test_explain_errors(capsys, copied_run, tmp_path):
    workspace = copied_run.path.parent.parent
    image = runs.load_predictions(copied_run)["path"].iloc[0]
    common = ["--image", image, "--out", tmp_path / "out", "--workspace", workspace]
    code, _, err = run_main(capsys, "explain", copied_run.id, "--methods", "gradcam,magic", *common)
    assert code == 2 and err.startswith("error: Unknown method(s) ['magic']")
    code, _, err = run_main(capsys, "explain", copied_run.id, "--methods", "gradcam", "--class-name", "zebra", *common)
    assert code == 2 and err.startswith("error: Unknown class 'zebra'") and "circle" in err
    assert not (tmp_path / "out").exists()
