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
