"""core.visualize: colormaps and overlays as pure functions of (image, map), with input checks."""

from __future__ import annotations

import numpy as np
import pytest

from core import visualize
from core.visualize import colorize, overlay

FIRST_LAST = {
    "jet": ((0, 0, 131), (128, 0, 0)),
    "viridis": ((68, 1, 84), (253, 231, 37)),
    "inferno": ((0, 0, 4), (252, 255, 164)),
    "gray": ((0, 0, 0), (255, 255, 255)),
}


def test_every_colormap_is_checked_here():
    assert set(visualize.COLORMAPS) == set(FIRST_LAST)


@pytest.mark.parametrize("name", sorted(FIRST_LAST))
def test_colorize_endpoints_shape_dtype(name):
    saliency = np.zeros((3, 5), np.float32)
    saliency[1, 2] = 1.0
    heatmap = colorize(saliency, name)
    assert heatmap.shape == (3, 5, 3) and heatmap.dtype == np.uint8
    first, last = FIRST_LAST[name]
    assert tuple(heatmap[0, 0]) == first
    assert tuple(heatmap[1, 2]) == last


def test_colorize_gray_is_linear_and_float64_input_is_fine():
    values = np.array([[0.0, 0.25, 0.5, 1.0]])
    np.testing.assert_array_equal(colorize(values, "gray")[0, :, 0], np.round(values[0] * 255).astype(np.uint8))
    # the default colormap is jet: halfway lies between cyan and yellow
    middle = colorize(np.full((1, 1), 0.5))[0, 0]
    assert middle[1] > 200 and middle[0] > 100 and middle[2] < 160


def test_overlay_alpha_endpoints():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    saliency = rng.random((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(overlay(image, saliency, alpha=0.0), image)
    np.testing.assert_array_equal(
        overlay(image, saliency, alpha=1.0, colormap="viridis"), colorize(saliency, "viridis")
    )
    half = overlay(image, saliency, alpha=0.5)
    expected = np.round(0.5 * image.astype(np.float32) + 0.5 * colorize(saliency).astype(np.float32))
    assert half.dtype == np.uint8 and half.shape == image.shape
    np.testing.assert_allclose(half, expected, atol=1)


def test_overlay_accepts_float_pixels():
    image = np.full((2, 2, 3), 200.0)
    out = overlay(image, np.zeros((2, 2)), alpha=0.0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.full((2, 2, 3), 200, np.uint8))


@pytest.mark.parametrize(
    "saliency, message",
    [
        (np.array([[0.5, np.nan]]), "NaN or infinite"),
        (np.array([[0.5, np.inf]]), "NaN or infinite"),
        (np.array([[0.5, 1.2]]), r"values in \[0, 1\]. Received range \[0.5, 1.2\]"),
        (np.array([[-0.1, 0.5]]), r"values in \[0, 1\]"),
        (np.zeros((2, 2, 1)), r"2-D map \(H, W\). Received shape \(2, 2, 1\)"),
        (np.zeros(4), "2-D map"),
    ],
    ids=["nan", "inf", "above-1", "below-0", "3-d", "1-d"],
)
def test_colorize_and_overlay_refuse_bad_maps(saliency, message):
    with pytest.raises(ValueError, match=message):
        colorize(saliency)
    if saliency.ndim == 2:
        with pytest.raises(ValueError, match=message):
            overlay(np.zeros((*saliency.shape, 3), np.uint8), saliency)


def test_overlay_errors():
    image = np.zeros((4, 4, 3), np.uint8)
    good = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"sizes must match"):
        overlay(image, np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"RGB image \(H, W, 3\). Received shape \(4, 4\)"):
        overlay(np.zeros((4, 4), np.uint8), good)
    with pytest.raises(ValueError, match=r"RGB image"):
        overlay(np.zeros((4, 4, 4), np.uint8), good)
    with pytest.raises(ValueError, match=r"pixel values in \[0, 255\]"):
        overlay(np.full((4, 4, 3), 300.0), good)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"opacity alpha in \[0, 1\]"):
            overlay(image, good, alpha=alpha)
    with pytest.raises(ValueError, match=r"Unknown colormap. Expected one of .*Received: 'rainbow'"):
        overlay(image, good, colormap="rainbow")
    with pytest.raises(ValueError, match=r"Unknown colormap"):
        colorize(good, "Jet")


# ---- colour bars, original-aspect drawing, file encoding --------------------------------------------


@pytest.mark.parametrize("name", sorted(FIRST_LAST))
def test_colorbar_runs_from_the_first_to_the_last_colour(name):
    bar = visualize.colorbar(name, width=64, height=5)
    assert bar.shape == (5, 64, 3) and bar.dtype == np.uint8
    first, last = FIRST_LAST[name]
    assert tuple(bar[0, 0]) == first and tuple(bar[4, -1]) == last
    np.testing.assert_array_equal(bar[0], bar[4])  # every row is the same
    np.testing.assert_array_equal(bar[0], colorize(np.linspace(0, 1, 64)[None], name)[0])


def test_colorbar_gray_increases_and_bad_sizes_fail():
    grey = visualize.colorbar("gray", width=256, height=1)[0, :, 0].astype(int)
    assert grey[0] == 0 and grey[-1] == 255 and (np.diff(grey) >= 0).all()
    for width, height in ((1, 4), (16, 0), (16.0, 4)):
        with pytest.raises(ValueError, match="Expected an int width >= 2 and height >= 1"):
            visualize.colorbar("jet", width=width, height=height)
    with pytest.raises(ValueError, match="Unknown colormap"):
        visualize.colorbar("rainbow")


@pytest.mark.parametrize(
    "size, max_side, expected",
    [((150, 200), 512, (150, 200)), ((3000, 4000), 512, (384, 512)), ((4000, 3000), 512, (512, 384)),
     ((48, 48), None, (48, 48)), ((1, 1000), 100, (1, 100))],
)  # fmt: skip
def test_fit_within_keeps_the_aspect_ratio(size, max_side, expected):
    assert visualize.fit_within(*size, max_side) == expected


def test_resize_map_keeps_range_and_sign():
    rng = np.random.default_rng(0)
    signed = rng.normal(size=(8, 8)).astype(np.float32)
    resized = visualize.resize_map(signed, (15, 20))
    assert resized.shape == (15, 20) and resized.dtype == np.float32
    assert signed.min() <= resized.min() < 0 < resized.max() <= signed.max()
    np.testing.assert_array_equal(visualize.resize_map(np.full((4, 4), 0.25), (3, 9)), np.full((3, 9), 0.25))
    same = visualize.resize_map(signed, (8, 8))
    np.testing.assert_array_equal(same, signed)
    assert same is not signed
    # a left-to-right ramp stays a left-to-right ramp
    ramp = visualize.resize_map(np.tile(np.linspace(0, 1, 4, dtype=np.float32), (4, 1)), (6, 12))
    assert (np.diff(ramp[0]) >= 0).all() and ramp[0, 0] == 0.0 and ramp[0, -1] == 1.0
    for bad, message in ((np.zeros(4), "2-D map"), (np.array([[np.nan]]), "NaN"), (np.zeros((0, 3)), "2-D map")):
        with pytest.raises(ValueError, match=message):
            visualize.resize_map(bad, (2, 2))
    with pytest.raises(ValueError, match="at least 1x1"):
        visualize.resize_map(signed, (0, 3))


def test_overlay_on_draws_a_model_size_map_on_the_original_image():
    image = np.full((150, 200, 3), 80, np.uint8)
    saliency = np.zeros((48, 48), np.float32)
    saliency[:, 24:] = 1.0  # right half hot
    drawn = visualize.overlay_on(image, saliency, alpha=1.0, colormap="gray")
    assert drawn.shape == (150, 200, 3)
    assert drawn[75, 10, 0] == 0 and drawn[75, 190, 0] == 255  # the halves land on the image's halves
    np.testing.assert_array_equal(visualize.overlay_on(image, saliency, alpha=0.0), image)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        visualize.overlay_on(image, saliency * 2)


def test_resize_image():
    image = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    resized = visualize.resize_image(image, (15, 20))
    assert resized.shape == (15, 20, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(visualize.resize_image(image, (30, 40)), image)
    with pytest.raises(ValueError, match="RGB image"):
        visualize.resize_image(image[..., 0], (4, 4))


def test_png_and_npz_bytes_round_trip():
    import io

    from PIL import Image

    image = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(visualize.png_bytes(image)))), image)
    grey = image[..., 0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(visualize.png_bytes(grey)))), grey)
    with pytest.raises(ValueError, match="Expected a uint8 image"):
        visualize.png_bytes(image.astype(np.float32))
    maps = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((1, 1))}
    with np.load(io.BytesIO(visualize.npz_bytes(maps))) as loaded:
        assert set(loaded.files) == {"a", "b"}
        np.testing.assert_array_equal(loaded["a"], maps["a"])
