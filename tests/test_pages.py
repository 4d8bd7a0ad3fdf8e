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
    loss, accuracy, compare_accuracy, compare_loss = _plots(at)
    assert [t["name"] for t in loss["data"]] == ["train", "validation"]
    assert [t["name"] for t in accuracy["data"]] == ["train", "validation"]
    assert {m.label: m.value for m in at.metric}["Epochs trained"] == "3"
    params = at.dataframe[0].value
    assert params.loc["arch", "value"] == "compact_cnn"
    assert params.loc["epochs", "value"] == "3"
    # Compare runs: one line per run, metrics side by side.
    (run_id,) = at.multiselect(key="compare_runs").value
    assert [t["name"] for t in compare_accuracy["data"]] == [run_id]
    assert "test accuracy" in at.dataframe[-1].value.columns
    assert at.dataframe[-1].value.index.tolist() == [run_id]


def test_training_page_refuses_bad_folders(app_workspace, monkeypatch, tmp_path):
    at = _open("pages/2_Training.py", app_workspace, monkeypatch)
    at.text_input(key="train_folder").set_value("/etc").run()
    assert any("outside the folders this dashboard may read" in e.value for e in at.error)
    empty = app_workspace / "empty_folder"
    empty.mkdir(exist_ok=True)
    at.text_input(key="train_folder").set_value(str(empty)).run()
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    assert any("Found no sub-folders" in e.value for e in at.error)
    from core import runs

    assert not [r for r in runs.list_runs(app_workspace) if r.status == "running"]


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
    assert layer.options == ["block1_conv", "block1_bn", "block1_relu", "block1_pool", "block2_conv", "block2_bn",
                             "block2_relu", "block2_pool", "block3_conv", "block3_bn", "block3_relu", "block3_pool", "top_conv"]
    assert layer.value == "top_conv"
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


def test_dataset_page_on_another_folder(app_workspace, monkeypatch, tmp_path):
    from core.shapes import generate_shapes_dataset

    folder = generate_shapes_dataset(app_workspace / "datasets" / "other", per_class=5, image_size=20, seed=3)
    (folder / "train" / "circle" / "broken.png").write_bytes(b"not a png")
    at = _open("pages/1_Dataset.py", app_workspace, monkeypatch)
    at.radio(key="dataset_source").set_value("Another folder").run()
    at.text_input(key="dataset_folder").set_value(str(folder)).run()
    assert not at.exception and not at.error
    counts = at.dataframe[0].value
    assert counts["total"].tolist() == [5, 5, 5]
    assert any("1 files skipped" in e.label for e in at.expander)
    at.text_input(key="dataset_folder").set_value("/").run()
    assert any("outside the folders" in e.value for e in at.error)


def _save_models(tmp_path):
    import keras
    from keras import layers

    inputs = keras.Input((48, 48, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    good = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    good.save(tmp_path / "good.keras")
    bad = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    bad.save(tmp_path / "two_classes.keras")
    return tmp_path / "good.keras", tmp_path / "two_classes.keras"


def test_import_page_uploads_a_model_and_refuses_a_mismatch(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    good, mismatched = _save_models(tmp_path)
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    data = str(workspace / "datasets" / "shapes")  # the copy, inside this workspace (a data root)
    at = _open("pages/5_Import_model.py", workspace, monkeypatch)
    at.file_uploader(key="model_upload").set_value(("two_classes.keras", mismatched.read_bytes(), "application/octet-stream")).run()
    at.text_input(key="import_data").set_value(data).run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert any("predicts 2 classes but the data has 3" in e.value for e in at.error)
    at.file_uploader(key="model_upload").set_value(("good.keras", good.read_bytes(), "application/octet-stream")).run()
    at.button(key="import_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Imported as run" in s.value for s in at.success)
    imported = [r for r in runs.list_runs(workspace) if r.meta.get("source") == "imported" and r.is_complete]
    assert len(imported) == 1 and imported[0].meta["preprocessing"] == "raw"


def test_import_page_takes_a_model_file_path(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    good, _ = _save_models(workspace)  # inside the workspace: a data root
    at = _open("pages/5_Import_model.py", workspace, monkeypatch)
    at.radio(key="import_kind").set_value("A file or SavedModel folder on this machine").run()
    at.text_input(key="model_path").set_value(str(good)).run()
    at.text_input(key="import_data").set_value(str(workspace / "datasets" / "shapes")).run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="import_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Imported as run" in s.value for s in at.success)
    assert any(r.meta.get("imported_from") == str(good.resolve()) for r in runs.list_runs(workspace))
    at.text_input(key="model_path").set_value(str(workspace / "notes.txt")).run()
    assert any("does not exist" in e.value for e in at.error)


def test_evaluation_page_shows_new_metrics_after_re_evaluation(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    at = _open("pages/3_Evaluation.py", workspace, monkeypatch)
    run = runs.latest_complete_run(workspace)
    metrics = runs.load_metrics(run)
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == f"{metrics['accuracy']:.3f}"
    runs.atomic_write_json(run.file(runs.METRICS_FILE), {**metrics, "accuracy": 0.123})  # as `core evaluate` would
    at = _open("pages/3_Evaluation.py", workspace, monkeypatch)
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == "0.123"


def test_occlusion_patch_size_is_bounded_by_the_input_size(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    slider = at.slider(key="patch_size")
    assert (slider.min, slider.max, slider.value) == (1, 24, 6)  # 48 px input: side/32 .. side/2, default side/8
