"""AppTest for every page against a small prepared run: no exception, the expected charts, tables, images."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import PROJECT_ROOT

HOME = str(PROJECT_ROOT / "Home.py")


def _open(page: str | None, workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("XAI_WORKSPACE", str(workspace))
    at = AppTest.from_file(HOME, default_timeout=240).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _plots(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _images(at) -> list:
    return list(at.get("image"))


def test_home_without_runs_offers_the_demo(tmp_path, monkeypatch):
    at = _open(None, tmp_path, monkeypatch)
    assert at.title[0].value == "XAI dashboard for image classifiers"
    assert [b.label for b in at.button] == ["Create the demo run"]
    assert any("No run yet" in s.value for s in at.subheader)


def test_home_shows_the_current_run(app_workspace, monkeypatch):
    at = _open(None, app_workspace, monkeypatch)
    labels = {m.label: m.value for m in at.metric}
    assert labels["Model"] == "compact_cnn"
    assert labels["Classes"] == "3"
    accuracy = float(labels["Test accuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert "Macro ROC AUC" in labels
    assert any("TensorFlow" in c.value and "device" in c.value for c in at.caption)
    assert len(at.selectbox(key="run_picker").options) == 1


def test_home_does_not_import_tensorflow(app_workspace):
    """Home must paint without TensorFlow: run it in a fresh interpreter and look at sys.modules."""
    import subprocess
    import sys

    code = (
        "import sys, os; os.environ['XAI_WORKSPACE']=sys.argv[1];"
        "from streamlit.testing.v1 import AppTest;"
        f"at=AppTest.from_file({HOME!r}, default_timeout=60).run();"
        "assert not at.exception;"
        "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_ABSENT')"
    )
    out = subprocess.run([sys.executable, "-c", code, str(app_workspace)], capture_output=True, text=True, timeout=120)
    assert "TF_ABSENT" in out.stdout, out.stdout + out.stderr


def test_dataset_page(app_workspace, monkeypatch):
    at = _open("pages/1_Dataset.py", app_workspace, monkeypatch)
    (figure,) = _plots(at)
    assert sorted(trace["name"] for trace in figure["data"]) == ["test", "train", "val"]
    counts = at.dataframe[0].value
    assert list(counts.index) == ["circle", "square", "triangle"]
    assert counts["total"].tolist() == [24, 24, 24]
    assert len(_images(at)) == 3 * 6  # six samples per class by default
    assert not at.warning  # balanced classes: no imbalance warning


def test_dataset_page_warns_on_imbalance(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    run = runs.latest_complete_run(app_workspace)
    dataset = tmp_path / "imbalanced"
    shutil.copytree(run.meta["dataset"], dataset)
    for path in sorted((dataset / "train" / "circle").glob("*.png"))[:12]:
        path.unlink()
    copy = tmp_path / "ws"
    shutil.copytree(app_workspace, copy)
    copied_run = runs.latest_complete_run(copy)
    runs.update_run(copied_run, dataset=str(dataset))
    at = _open("pages/1_Dataset.py", copy, monkeypatch)
    assert any("imbalance" in w.value for w in at.warning)


def test_training_page(app_workspace, monkeypatch):
    at = _open("pages/2_Training.py", app_workspace, monkeypatch)
    loss, accuracy = _plots(at)
    assert [t["name"] for t in loss["data"]] == ["train", "validation"]
    assert [t["name"] for t in accuracy["data"]] == ["train", "validation"]
    assert {m.label: m.value for m in at.metric}["Epochs trained"] == "3"
    params = at.dataframe[0].value
    assert params.loc["arch", "value"] == "compact_cnn"
    assert params.loc["epochs", "value"] == "3"


def test_evaluation_page(app_workspace, monkeypatch):
    from core import runs

    at = _open("pages/3_Evaluation.py", app_workspace, monkeypatch)
    report = at.dataframe[0].value
    assert list(report.index) == ["circle", "square", "triangle", "accuracy", "macro avg", "weighted avg"]
    metrics = runs.load_metrics(runs.latest_complete_run(app_workspace))
    assert report.loc["accuracy", "f1"] == pytest.approx(metrics["accuracy"])
    counts, normalized, roc, pr = _plots(at)
    assert counts["data"][0]["type"] == "heatmap" and normalized["data"][0]["type"] == "heatmap"
    assert len([t for t in roc["data"] if t["name"] != "chance"]) == 3
    assert all("AUC" in t["name"] for t in roc["data"] if t["name"] != "chance")
    assert len(pr["data"]) == 3


def _explainer(app_workspace, monkeypatch) -> AppTest:
    return _open("pages/4_Explainer.py", app_workspace, monkeypatch)


def test_explainer_shows_three_methods_side_by_side(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    titles = [m.value for m in at.markdown]
    for title in ("**Grad-CAM**", "**Occlusion sensitivity**", "**Vanilla gradients**"):
        assert title in titles
    timings = [c.value for c in at.caption if c.value.endswith(" ms")]
    assert len(timings) == 3
    assert len(_images(at)) == 1 + 2 * 3  # the input, then overlay + heatmap per method
    (probabilities,) = _plots(at)
    assert probabilities["data"][0]["y"] == ["circle", "square", "triangle"]
    assert not at.error


def test_explainer_controls(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    layer = at.selectbox(key="gradcam_layer")
    assert "top_conv" in layer.options and layer.value == layer.options[-1]
    at.selectbox(key="outcome_filter").select("Correct").run()
    at.selectbox(key="target_class").select("triangle").run()
    at.selectbox(key="gradcam_layer").select("block2_conv").run()
    at.slider(key="patch_size").set_value(4).run()
    assert not at.exception
    assert any("explaining **triangle**" in m.value for m in at.markdown)
    at.multiselect(key="methods").set_value(["occlusion"]).run()
    assert len([c for c in at.caption if c.value.endswith(" ms")]) == 1


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A small PNG that claims 30,000 x 30,000 pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(at: AppTest, name: str, content: bytes) -> AppTest:
    at.radio(key="image_source").set_value("Upload").run()
    at.file_uploader(key="upload").set_value((name, content, "image/png")).run()
    return at


def test_explainer_upload_of_a_good_image(app_workspace, monkeypatch):
    at = _upload(_explainer(app_workspace, monkeypatch), "grey.png", _png(90, 60))
    assert not at.exception and not at.error
    assert len([c for c in at.caption if c.value.endswith(" ms")]) == 3


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.png", b"this is a text file, not an image", "not an image"),
        ("corrupt.png", _png(64, 64)[:60], "truncated or corrupt"),
        ("bomb.png", _bomb(), "decompression bomb"),
        ("empty.png", b"", "empty"),
    ],
)
def test_explainer_refuses_bad_uploads_with_a_message(app_workspace, monkeypatch, name, content, expected):
    at = _upload(_explainer(app_workspace, monkeypatch), name, content)
    assert not at.exception
    assert len(at.error) == 1
    assert name in at.error[0].value and expected in at.error[0].value
    assert not [c for c in at.caption if c.value.endswith(" ms")]  # nothing was explained
