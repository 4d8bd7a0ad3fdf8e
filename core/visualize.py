"""Explanation maps + images -> heatmaps and overlays. Pure numpy; no model, no TensorFlow."""

from __future__ import annotations

import numpy as np

# Anchor colours (RGB 0-255) of each colormap, evenly spaced from 0 to 1; interpolated to 256 steps.
_ANCHORS = {
    "jet": [(0, 0, 131), (0, 60, 255), (0, 255, 255), (255, 255, 0), (255, 60, 0), (128, 0, 0)],
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "inferno": [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}
COLORMAPS = tuple(_ANCHORS)


def _lut(name: str) -> np.ndarray:
    if name not in _ANCHORS:
        raise ValueError(f"Unknown colormap. Expected one of {COLORMAPS}. Received: {name!r}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(anchors))
    steps = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(steps, positions, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


_LUTS = {name: _lut(name) for name in COLORMAPS}


def _check_map(saliency) -> np.ndarray:
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2:
        raise ValueError(f"Expected a 2-D map (H, W). Received shape {saliency.shape}")
    if not np.all(np.isfinite(saliency)):
        raise ValueError("The map contains NaN or infinite values")
    if saliency.size and (saliency.min() < -1e-6 or saliency.max() > 1 + 1e-6):
        raise ValueError(f"Expected map values in [0, 1]. Received range [{saliency.min():.3g}, {saliency.max():.3g}]")
    return np.clip(saliency, 0.0, 1.0)


def colorize(saliency, colormap: str = "jet") -> np.ndarray:
    """A map in [0, 1] (H, W) -> uint8 RGB heatmap (H, W, 3)."""
    saliency = _check_map(saliency)
    if colormap not in _LUTS:
        _lut(colormap)  # raises with the list of names
    return _LUTS[colormap][np.round(saliency * 255).astype(np.int64)]


def overlay(image, saliency, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blends the heatmap of ``saliency`` over ``image`` (uint8 RGB of the same H, W) with opacity ``alpha``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an RGB image (H, W, 3). Received shape {image.shape}")
    if image.dtype != np.uint8 and (image.min() < 0 or image.max() > 255):
        raise ValueError(f"Expected pixel values in [0, 255]. Received range [{image.min()}, {image.max()}]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Expected opacity alpha in [0, 1]. Received: alpha={alpha}")
    heatmap = colorize(saliency, colormap)
    if heatmap.shape[:2] != image.shape[:2]:
        raise ValueError(f"The map is {heatmap.shape[:2]} but the image is {image.shape[:2]}: sizes must match")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heatmap.astype(np.float32)
    return np.clip(blended.round(), 0, 255).astype(np.uint8)
