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


def colorbar(colormap: str = "jet", width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal colour bar (height, width, 3) uint8: the colormap from 0 (left) to 1 (right)."""
    if not (isinstance(width, int) and isinstance(height, int) and width >= 2 and height >= 1):
        raise ValueError(f"Expected an int width >= 2 and height >= 1. Received: width={width!r}, height={height!r}")
    row = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :], colormap)
    return np.repeat(row, height, axis=0)


def fit_within(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled down, aspect kept, so that neither side exceeds ``max_side`` (None: as is)."""
    if height < 1 or width < 1:
        raise ValueError(f"Expected a size of at least 1x1. Received: height={height}, width={width}")
    if max_side is None or max(height, width) <= max_side:
        return int(height), int(width)
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_map(saliency, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D map (raw or normalised, any sign) resized bilinearly to ``shape`` = (height, width), float32.

    Bilinear interpolation never leaves the input's [min, max], so a map in [0, 1] stays in [0, 1].
    """
    from PIL import Image

    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2 or saliency.size == 0:
        raise ValueError(f"Expected a 2-D map (H, W). Received shape {saliency.shape}")
    if not np.all(np.isfinite(saliency)):
        raise ValueError("The map contains NaN or infinite values")
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ValueError(f"Expected a target size of at least 1x1. Received: {shape}")
    if saliency.shape == (height, width):
        return saliency.copy()
    resized = np.asarray(Image.fromarray(saliency).resize((width, height), Image.BILINEAR), np.float32)
    return np.clip(resized, saliency.min(), saliency.max())


def resize_image(image, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 RGB image (H, W, 3) resized bilinearly to ``shape`` = (height, width)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an RGB image (H, W, 3). Received shape {image.shape}")
    height, width = (int(v) for v in shape)
    if image.shape[:2] == (height, width):
        return image.astype(np.uint8, copy=True)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return np.asarray(pil.resize((width, height), Image.BILINEAR), np.uint8)


def overlay_on(image, saliency, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """`overlay` for a map of any size: the map is resized onto the image first, so the image keeps its
    own size and aspect ratio (a 200x150 photo stays 4:3 whatever the model's input size)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"Expected an RGB image (H, W, 3). Received shape {image.shape}")
    saliency = _check_map(saliency)
    return overlay(image, resize_map(saliency, image.shape[:2]), alpha, colormap)


def png_bytes(array) -> bytes:
    """A uint8 image (H, W) or (H, W, 3) encoded as PNG."""
    import io

    from PIL import Image

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"Expected a uint8 image (H, W) or (H, W, 3|4). Received {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of a compressed ``.npz`` file (``np.load(io.BytesIO(b))`` reads it)."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()
