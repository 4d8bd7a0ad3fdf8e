"""AppTest of the Explainer page against a small prepared run."""

from __future__ import annotations

import pytest
from apptest import bomb, images, open_page, plots, png
from streamlit.testing.v1 import AppTest


def _explainer(app_workspace, monkeypatch) -> AppTest:
    return open_page("pages/4_Explainer.py", app_workspace, monkeypatch)


def test_explainer_shows_three_methods_side_by_side(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    titles = [m.value for m in at.markdown]
    for title in ("**Grad-CAM**", "**Occlusion sensitivity**", "**Vanilla gradients**"):
        assert title in titles
    timings = [c.value for c in at.caption if c.value.endswith(" ms")]
    assert len(timings) == 3
    assert len(images(at)) == 1 + 2 * 3  # the input, then overlay + heatmap per method
    (probabilities,) = plots(at)
    assert probabilities["data"][0]["y"] == ["circle", "square", "triangle"]
    assert not at.error


def test_explainer_controls(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    layer = at.selectbox(key="gradcam_layer")
    assert layer.options == [
        "block1_conv",
        "block1_bn",
        "block1_relu",
        "block1_pool",
        "block2_conv",
        "block2_bn",
        "block2_relu",
        "block2_pool",
        "block3_conv",
        "block3_bn",
        "block3_relu",
        "block3_pool",
        "top_conv",
    ]
    assert layer.value == "top_conv"
    at.selectbox(key="outcome_filter").select("Correct").run()
    at.selectbox(key="target_class").select("triangle").run()
    at.selectbox(key="gradcam_layer").select("block2_conv").run()
    at.slider(key="patch_size").set_value(4).run()
    assert not at.exception
    assert any("explaining **triangle**" in m.value for m in at.markdown)
    at.multiselect(key="methods").set_value(["occlusion"]).run()
    assert len([c for c in at.caption if c.value.endswith(" ms")]) == 1


def _upload(at: AppTest, name: str, content: bytes) -> AppTest:
    at.radio(key="image_source").set_value("Upload").run()
    at.file_uploader(key="upload").set_value((name, content, "image/png")).run()
    return at


def test_explainer_upload_of_a_good_image(app_workspace, monkeypatch):
    at = _upload(_explainer(app_workspace, monkeypatch), "grey.png", png(90, 60))
    assert not at.exception and not at.error
    assert len([c for c in at.caption if c.value.endswith(" ms")]) == 3


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.png", b"this is a text file, not an image", "not an image"),
        ("corrupt.png", png(64, 64)[:60], "truncated or corrupt"),
        ("bomb.png", bomb(), "decompression bomb"),
        ("empty.png", b"", "empty"),
    ],
)
def test_explainer_refuses_bad_uploads_with_a_message(app_workspace, monkeypatch, name, content, expected):
    at = _upload(_explainer(app_workspace, monkeypatch), name, content)
    assert not at.exception
    assert len(at.error) == 1
    assert name in at.error[0].value and expected in at.error[0].value
    assert not [c for c in at.caption if c.value.endswith(" ms")]  # nothing was explained


def test_occlusion_patch_size_is_bounded_by_the_input_size(app_workspace, monkeypatch):
    at = _explainer(app_workspace, monkeypatch)
    slider = at.slider(key="patch_size")
    assert (slider.min, slider.max, slider.value) == (1, 24, 6)  # 48 px input: side/32 .. side/2, default side/8
