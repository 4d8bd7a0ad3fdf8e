"""Ground-truth object masks for images, where a dataset has them.

Layout: ``<dataset>/masks/`` mirrors the image folder (same relative paths; the demo writes
``masks/<split>/<class>/<file>``). A mask is any image Pillow reads, the object where the value is above
half (255 on the object, 0 elsewhere); a mask may be saved as PNG beside a JPEG image (same stem).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASKS_DIR = "masks"
_SUFFIXES = (".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jpg", ".jpeg")


def mask_path(image_path, dataset_root) -> Path | None:
    """The mask file of an image, or None when the dataset has none for it (or the image lies outside it)."""
    root = Path(dataset_root)
    try:
        relative = Path(image_path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    if relative.parts and relative.parts[0] == MASKS_DIR:
        return None
    candidate = root / MASKS_DIR / relative
    if candidate.is_file():
        return candidate
    for suffix in _SUFFIXES:
        other = candidate.with_suffix(suffix)
        if other.is_file():
            return other
    return None


def has_masks(dataset_root) -> bool:
    return (Path(dataset_root) / MASKS_DIR).is_dir()


def load_mask(path, size: tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask at ``size`` (nearest-neighbour resize), True where the value is above 127."""
    from PIL import Image

    from core.data import load_image

    array = load_image(path).astype(np.float32).mean(axis=-1)
    if array.shape != tuple(size):
        resized = Image.fromarray(array.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST)
        array = np.asarray(resized, dtype=np.float32)
    return array > 127


def masks_for(image_paths, dataset_root, size: tuple[int, int]) -> list[np.ndarray | None]:
    """One mask (bool (H, W) at ``size``) or None per image; unreadable masks count as missing."""
    from core.data import ImageError

    found: list[np.ndarray | None] = []
    for image in image_paths:
        path = mask_path(image, dataset_root) if dataset_root else None
        try:
            found.append(None if path is None else load_mask(path, size))
        except (ImageError, OSError):
            found.append(None)
    return found


def outline(mask) -> np.ndarray:
    """The mask's boundary pixels (bool (H, W)): inside the mask, next to a pixel outside it."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_outline(image, mask, colour=(255, 255, 255)) -> np.ndarray:
    """``image`` (uint8 RGB) with the mask's outline drawn on it (a copy)."""
    drawn = np.array(image, dtype=np.uint8, copy=True)
    drawn[outline(mask)] = colour
    return drawn
