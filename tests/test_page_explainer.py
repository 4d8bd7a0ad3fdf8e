"""AppTest of the Explainer page against a small prepared run: methods and parameter widgets from the
registry, raw ranges, downloads (their bytes read back), true aspect ratio, two runs side by side."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
import streamlit.testing.v1.app_test as app_test_module
from apptest import bomb, images, open_page, plots, png
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from ui.explainer import CURVES_KEY

DEFAULT = ("gradcam", "occlusion", "vanilla_gradients")
COMPACT_LAYERS = [
    "block1_conv", "block1_bn", "block1_relu", "block1_pool", "block2_conv", "block2_bn", "block2_relu",
    "block2_pool", "block3_conv", "block3_bn", "block3_relu", "block3_pool", "top_conv",
]  # fmt: skip


class RecordingStorage(MemoryMediaFileStorage):
    """AppTest's in-memory media storage, keeping every file's bytes by id so tests can read downloads."""

    files: dict[str, bytes] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
        RecordingStorage.files[file_id] = self.get_file(file_id).content
        return file_id


@pytest.fixture
def recorded(monkeypatch):
    RecordingStorage.files = {}
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    return RecordingStorage.files


def downloads(at: AppTest) -> dict[str, bytes]:
    """``{widget key: bytes}`` of every download button on the page."""
    found = {}
    for element in at.get("download_button"):
        file_id = element.proto.url.rsplit("/", 1)[-1].split(".")[0]
        key = element.proto.id.rsplit("-", 1)[-1]
        found[key] = RecordingStorage.files[file_id]
    return found


def _explainer(workspace, monkeypatch) -> AppTest:
    return open_page("pages/4_Explainer.py", workspace, monkeypatch)


def _timings(at) -> list[str]:
    return [c.value for c in at.caption if " ms · " in c.value]


def _audit_curve_styles() -> list[tuple]:
    """(name, colour, dash) of the Audit page's Trust curves, the reference for the Explainer's."""
    from ui.audit import curves_figure

    curve = {f"mean_{k}_curve": [0.0, 1.0] for k in ("deletion", "insertion")}
    figure = curves_figure(curve, curve, [0.0, 1.0])
    return [(t.name, t.line.color, t.line.dash) for t in figure.data]


def test_default_methods_side_by_side_with_raw_ranges_and_downloads(app_workspace, monkeypatch, recorded):
    from core.explain import METHODS, describe

    at = _explainer(app_workspace, monkeypatch)
    assert at.multiselect(key="methods").options == [describe(m)["title"] for m in METHODS]
    assert at.multiselect(key="methods").value == list(DEFAULT)
    titles = [m.value for m in at.markdown]
    for method in DEFAULT:
        assert f"**{describe(method)['title']}**" in titles
    timings = _timings(at)
    assert len(timings) == 3
    for method, timing in zip(DEFAULT, timings):
        assert timing.endswith(describe(method)["description"])
    raw = [c.value for c in at.caption if c.value.startswith("Raw range [")]
    assert len(raw) == 3 and all(describe(m)["units"] in text for m, text in zip(DEFAULT, raw))
    assert len(images(at)) == 1 + 3 * 3  # the input, then overlay + heatmap + colour bar per method
    probabilities, *curves = plots(at)
    assert probabilities["data"][0]["y"] == ["circle", "square", "triangle"]
    assert not at.error and not at.exception

    # evidence under each map: deletion and insertion curves (21 points) with the random map's beside them
    assert len(curves) == 3
    trust_styles = _audit_curve_styles()
    for figure in curves:
        names = [trace["name"] for trace in figure["data"]]
        assert names == ["deletion", "deletion, random map", "insertion", "insertion, random map"]
        # the same lines as the Audit page's Trust curves: name, colour and dash
        assert [(t["name"], t["line"]["color"], t["line"].get("dash")) for t in figure["data"]] == trust_styles
        assert figure["layout"]["xaxis"]["title"]["text"] == "fraction of pixels changed"
        assert all(len(trace["y"]) == 21 and 0 <= min(trace["y"]) <= max(trace["y"]) <= 1 for trace in figure["data"])
        assert figure["data"][0]["x"][0] == 0 and figure["data"][0]["x"][-1] == 1
    # one line under each chart names the four lines (no room for a legend at three columns)
    keys = [c.value for c in at.caption if c.value == CURVES_KEY]
    assert len(keys) == 3 and all(w in CURVES_KEY for w in (":red[deletion]", ":blue[insertion]", "solid", "dotted"))
    aucs = [c.value for c in at.caption if c.value.startswith("Deletion AUC")]
    assert len(aucs) == 3
    (ranking,) = [c.value for c in at.caption if c.value.startswith("Faithfulness ranking")]
    assert all(describe(m)["title"] in ranking for m in DEFAULT) and "random map" in ranking
    # the shapes dataset has masks: each method is scored against the test image's mask
    localisation = [c.value for c in at.caption if c.value.startswith("Against the mask")]
    assert len(localisation) == 3 and all(("hit" in t or "miss" in t) and "top-k IoU" in t for t in localisation)

    files = downloads(at)
    assert set(files) == {f"a_{m}_{kind}_png" for m in DEFAULT for kind in ("overlay", "heatmap")} | {
        "download_zip",
        "download_npz",
        "download_json",
    }
    assert Image.open(io.BytesIO(files["a_gradcam_overlay_png"])).size == (48, 48)
    # short labels in each method's cell, so they are not cut at three columns (the browser test looks)
    cell = [b.proto for b in at.get("download_button") if b.proto.id.endswith(("_overlay_png", "_heatmap_png"))]
    assert sorted({b.label for b in cell}) == ["Heatmap", "Overlay"] and all("PNG" in b.help for b in cell)
    report = json.loads(files["download_json"])
    assert list(report["methods"]) == list(DEFAULT)
    assert report["predicted_class"] in ("circle", "square", "triangle")
    assert {"numpy", "keras", "python"} <= set(report["versions"])
    assert report["methods"]["occlusion"]["parameters"] == {"patch_size": 6, "stride": None, "batch_size": 64}
    with np.load(io.BytesIO(files["download_npz"])) as maps:
        assert set(maps.files) == {name for m in DEFAULT for name in (m, f"{m}_model_input")}
        for method in DEFAULT:
            entry = report["methods"][method]
            assert float(maps[f"{method}_model_input"].max()) == pytest.approx(entry["raw_max"])
            assert any(f"{entry['raw_max']:.3g}" in text for text in raw)
    with zipfile.ZipFile(io.BytesIO(files["download_zip"])) as archive:
        names = set(archive.namelist())
    assert {"explanation.json", "raw_maps.npz", "input.png", "gradcam_overlay.png", "occlusion_heatmap.png"} <= names


def _widget(at, key):
    for kind in ("slider", "number_input", "checkbox", "selectbox"):
        found = [w for w in getattr(at, kind) if w.key == key]
        if found:
            return kind, found[0]
    return None, None


def test_every_method_gets_its_parameter_widgets_from_describe(app_workspace, monkeypatch):
    from core.explain import METHODS, describe

    at = _explainer(app_workspace, monkeypatch)
    at.multiselect(key="methods").set_value(list(METHODS)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(_timings(at)) + len(at.error) == len(METHODS)  # each method: its cell or its error
    for method in METHODS:
        for name, entry in describe(method, (48, 48))["params"].items():
            key = f"param_{method}_{name}"
            kind, widget = _widget(at, key)
            if entry["kind"] == "layer":
                assert kind == "selectbox" and widget.options == ["None (default)"] + COMPACT_LAYERS, key
            elif entry["kind"] == "choice":
                assert kind == "selectbox" and widget.options[: len(entry["choices"])] == entry["choices"], key
                assert widget.value == entry["default"]
            elif entry["kind"] == "bool":
                assert kind == "checkbox" and widget.value is entry["default"], key
            elif entry["nullable"] and entry["default"] is None:
                _, none = _widget(at, f"{key}_none")
                assert none.value is True and kind is None, key  # None chosen: no number widget
            else:
                assert kind in ("slider", "number_input") and widget.value == entry["default"], key
                if kind == "slider":
                    assert (widget.min, widget.max) == (entry["minimum"], entry["maximum"]), key


def test_parameters_change_the_explanation(app_workspace, monkeypatch, recorded):
    at = _explainer(app_workspace, monkeypatch)
    at.multiselect(key="methods").set_value(["occlusion", "gradcam"]).run()
    slider = at.slider(key="param_occlusion_patch_size")
    assert (slider.min, slider.max, slider.value) == (1, 24, 6)  # bounds from describe for the 48 px input
    at.checkbox(key="param_occlusion_stride_none").uncheck().run()
    at.slider(key="param_occlusion_stride").set_value(2).run()
    at.slider(key="param_occlusion_patch_size").set_value(4).run()
    at.selectbox(key="param_gradcam_layer_name").select("block2_conv").run()
    at.selectbox(key="target_class").select("triangle").run()
    assert not at.exception and not at.error
    assert any("explaining **triangle**" in m.value for m in at.markdown)
    report = json.loads(downloads(at)["download_json"])
    assert report["target_class"] == "triangle"
    assert report["methods"]["occlusion"]["parameters"] == {"patch_size": 4, "stride": 2, "batch_size": 64}
    assert report["methods"]["gradcam"]["parameters"]["layer_name"] == "block2_conv"
    at.multiselect(key="methods").set_value(["vanilla_gradients"]).run()
    assert len(_timings(at)) == 1


def _upload(at: AppTest, name: str, content: bytes) -> AppTest:
    at.radio(key="image_source").set_value("Upload").run()
    at.file_uploader(key="upload").set_value((name, content, "image/png")).run()
    return at


def test_a_non_square_upload_keeps_its_aspect_ratio(app_workspace, monkeypatch, recorded):
    from core.compare import map_to_original
    from core.data import load_thumbnail

    at = _upload(_explainer(app_workspace, monkeypatch), "wide.png", png(200, 150))
    assert not at.exception and not at.error
    assert len(_timings(at)) == 3
    files = downloads(at)
    for key in ("a_gradcam_overlay_png", "a_occlusion_heatmap_png"):
        assert Image.open(io.BytesIO(files[key])).size == (200, 150)  # 4:3, not the model's 48x48
    with zipfile.ZipFile(io.BytesIO(files["download_zip"])) as archive:
        assert np.load(io.BytesIO(archive.read("occlusion.npy"))).shape == (150, 200)
        assert np.load(io.BytesIO(archive.read("raw_maps.npz")))["occlusion_model_input"].shape == (48, 48)
    # the same core functions the page uses
    assert load_thumbnail(png(200, 150), 512).shape == (150, 200, 3)
    assert map_to_original(np.zeros((48, 48), np.float32), (150, 200)).shape == (150, 200)


BAD_UPLOADS = [
    ("notes.png", b"this is a text file, not an image", "not an image"),
    ("corrupt.png", png(64, 64)[:60], "truncated or corrupt"),
    ("bomb.png", bomb(), "decompression bomb"),
    ("empty.png", b"", "empty"),
]


def test_explainer_refuses_bad_uploads_with_a_message(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    at.radio(key="image_source").set_value("Upload").run()
    for name, content, expected in BAD_UPLOADS:  # one session: each upload replaces the previous one
        at.file_uploader(key="upload").set_value((name, content, "image/png")).run()
        assert not at.exception, name
        assert len(at.error) == 1, name
        assert name in at.error[0].value and expected in at.error[0].value
        assert not _timings(at)  # nothing was explained


# ---- two runs side by side ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_run_workspace(app_workspace, tmp_path_factory):
    """The app workspace's run, plus a second run whose model takes 32 px images (untrained weights)."""
    from core import runs
    from core.models import build_model

    workspace = tmp_path_factory.mktemp("two_runs")
    (first,) = runs.list_runs(app_workspace)
    shutil.copytree(first.path, runs.runs_dir(workspace) / first.id)
    second = runs.runs_dir(workspace) / "00000000-000000-small-0001"  # older: the first stays the default run
    shutil.copytree(first.path, second)
    build_model("compact_cnn", 3, image_size=32).save(second / "model.keras")
    return workspace, first.id, second.name


def test_two_runs_on_the_same_image(two_run_workspace, monkeypatch, recorded):
    workspace, first, second = two_run_workspace
    at = _explainer(workspace, monkeypatch)
    at.multiselect(key="methods").set_value(["gradcam", "occlusion"]).run()
    at.slider(key="param_occlusion_patch_size").set_value(20).run()  # larger than the 32 px model allows
    at.selectbox(key="param_gradcam_layer_name").select("block2_conv").run()
    at.selectbox(key="compare_run").select(second).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    assert any(f"Run `{second}` predicts" in m.value for m in at.markdown)
    assert len(_timings(at)) == 4  # two methods for each run
    files = downloads(at)
    assert {"a_gradcam_overlay_png", "b_gradcam_overlay_png", "b_occlusion_heatmap_png"} <= set(files)
    with zipfile.ZipFile(io.BytesIO(files["download_zip"])) as archive:
        report_a = json.loads(archive.read(f"{first}/explanation.json"))
        report_b = json.loads(archive.read(f"{second}/explanation.json"))
        raw_b = np.load(io.BytesIO(archive.read(f"{second}/raw_maps.npz")))["occlusion_model_input"]
    assert report_a["model_input_size"] == [48, 48] and report_b["model_input_size"] == [32, 32]
    assert raw_b.shape == (32, 32)
    assert report_a["methods"]["occlusion"]["parameters"]["patch_size"] == 20
    assert report_b["methods"]["occlusion"]["parameters"]["patch_size"] == 16  # clamped to the 32 px bounds
    assert report_b["methods"]["gradcam"]["parameters"]["layer_name"] == "block2_conv"
    assert report_a["image_size"] == report_b["image_size"]  # both drawn on the same picture


def test_faithfulness_can_be_switched_off(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    at.toggle(key="faithfulness").set_value(False).run()
    assert not at.exception and len(plots(at)) == 1  # the probabilities only
    assert not [c for c in at.caption if c.value.startswith(("Deletion AUC", "Faithfulness ranking"))]
    assert len(_timings(at)) == 3


def _workspace_copy(app_workspace, tmp_path):
    from core import runs

    (run,) = runs.list_runs(app_workspace)
    shutil.copytree(run.path, runs.runs_dir(tmp_path) / run.id)
    return tmp_path, runs.read_run(runs.runs_dir(tmp_path) / run.id)


def test_another_page_opens_an_image_with_its_true_and_predicted_class(app_workspace, monkeypatch, tmp_path):
    from core import runs

    workspace, run = _workspace_copy(app_workspace, tmp_path)
    frame = runs.load_predictions(run)
    row = frame.iloc[-1]
    other = next(c for c in run.class_names if c != row["true_class"])  # a "predicted" class unlike the true one
    at = open_page(None, workspace, monkeypatch)
    at.session_state["explain_request"] = {"run": run.id, "path": row["path"], "classes": [row["true_class"], other]}
    at.switch_page("pages/4_Explainer.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="test_image").value == row["path"]
    assert at.selectbox(key="target_class").value == "Predicted and true class, side by side"
    assert at.selectbox(key="compare_run").disabled
    if row["pred_class"] == row["true_class"]:  # the model is right: one class to explain
        assert any("one class to explain" in c.value for c in at.caption)
        assert len(_timings(at)) == 3
    else:
        heads = [m.value for m in at.markdown if m.value.startswith(("Predicted class **", "True class **"))]
        assert heads[0].startswith(f"Predicted class **{row['pred_class']}**")
        assert heads[1].startswith(f"True class **{row['true_class']}**")
        assert len(_timings(at)) == 6
    # choosing a class by hand explains that class only
    at.selectbox(key="target_class").select(other).run()
    assert any(f"explaining **{other}**" in m.value for m in at.markdown) and len(_timings(at)) == 3


def test_side_by_side_classes_on_a_misclassified_image(app_workspace, monkeypatch, tmp_path):
    """A threshold that makes the first class win everywhere turns images of other classes into mistakes."""
    from core import explorer, runs

    workspace, run = _workspace_copy(app_workspace, tmp_path)
    first = run.class_names[0]
    explorer.save_threshold(run, first, 0.0)  # the first class whenever its probability is >= 0
    frame = runs.load_predictions(run)
    row = frame[frame["true_class"] != first].iloc[0]
    at = _explainer(workspace, monkeypatch)
    at.selectbox(key="test_image").set_value(row["path"]).run()
    assert any(c.value.startswith(f"Decision threshold saved on the Evaluation page: **{first}**") for c in at.caption)
    assert any(m.value.startswith(f"Predicted **{first}**") for m in at.markdown)
    at.selectbox(key="target_class").select("Predicted and true class, side by side").run()
    assert not at.exception and not at.error
    heads = [m.value for m in at.markdown if m.value.startswith(("Predicted class **", "True class **"))]
    assert heads[0].startswith(f"Predicted class **{first}**") and heads[1].startswith(
        f"True class **{row['true_class']}**"
    )
    assert len(_timings(at)) == 6
    rankings = [c.value for c in at.caption if "Faithfulness ranking" in c.value]
    assert len(rankings) == 2  # one per class


def test_a_flag_from_the_explainer_is_stored_with_the_image(app_workspace, monkeypatch, tmp_path):
    from core import feedback

    workspace, run = _workspace_copy(app_workspace, tmp_path)
    at = _explainer(workspace, monkeypatch)
    path = at.selectbox(key="test_image").value
    (form_type,) = [r for r in at.radio if r.key and r.key.endswith("_type")]
    form_type.set_value("implausible_explanation")
    prefix = form_type.key[: -len("_type")]
    at.text_area(key=f"{prefix}_comment").set_value("lights up the background")
    next(b for b in at.button if b.label == "Flag this").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("stored" in s.value for s in at.success)
    (flag,) = feedback.list_flags(workspace)
    assert flag["run_id"] == run.id and flag["flag_type"] == "implausible_explanation"
    assert flag["comment"] == "lights up the background"
    assert flag["method"] == "gradcam, occlusion, vanilla_gradients"
    assert feedback.image_path(workspace, flag).read_bytes() == open(path, "rb").read()
