"""The built-in demo dataset: circles, squares and triangles on varied backgrounds, each image with its
ground-truth object mask (the next issues measure how well explanations localise). Deterministic for a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEMO_CLASSES = ("circle", "square", "triangle")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
TAG_FRACTION = 0.125
"""Side of the optional corner tag, as a fraction of the image side (the planted-shortcut demo)."""


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float):
    if kind == "square":
        corners = [angle + np.pi / 4 + k * np.pi / 2 for k in range(4)]
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in corners]
    if kind == "triangle":
        corners = [angle - np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in corners]
    raise ValueError(kind)


def _background(rng, size: int, dark: bool) -> np.ndarray:
    """A random two-colour gradient with noise, dark or light, with muted colours."""
    base = rng.uniform(25, 95) if dark else rng.uniform(160, 230)
    c0, c1 = base + rng.uniform(-25, 25, size=(2, 3))
    direction = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.cos(direction) * xx + np.sin(direction) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape)
    return np.clip(image, 0, 255)


def _shape_colour(rng, dark_background: bool) -> np.ndarray:
    """A saturated colour whose brightness contrasts with the background."""
    colour = rng.uniform(0, 255, size=3)
    colour[rng.integers(3)] = rng.uniform(200, 255) if dark_background else rng.uniform(0, 60)
    luminance = colour @ np.array([0.299, 0.587, 0.114])
    target = rng.uniform(170, 235) if dark_background else rng.uniform(20, 80)
    return np.clip(colour + (target - luminance), 0, 255)


def render_shape(rng, kind: str, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One demo image (uint8 RGB) and its object mask (bool), drawn at 4x and downsampled."""
    from PIL import ImageDraw

    scale = 4
    dark = bool(rng.random() < 0.5)
    background = _background(rng, size, dark)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    mask_img = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(mask_img)
    if kind == "circle":
        box = [(cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale]
        draw.ellipse(box, fill=255)
    else:
        polygon = _shape_polygon(kind, cx * scale, cy * scale, r * scale, rng.uniform(-0.15, 0.15))
        draw.polygon(polygon, fill=255)
    alpha = np.asarray(mask_img.resize((size, size), Image.BOX), dtype=np.float64) / 255.0
    colour = _shape_colour(rng, dark)
    image = background * (1 - alpha[..., None]) + colour * alpha[..., None]
    return image.round().astype(np.uint8), alpha >= 0.5


def add_corner_tag(image: np.ndarray, corner: str = "top_left", fraction: float = TAG_FRACTION) -> np.ndarray:
    """A copy of ``image`` with a small white square (side ``fraction`` of the image) in one corner,
    one pixel in from the edges (the planted shortcut of `core.shortcut_demo`)."""
    if corner not in CORNERS:
        raise ValueError(f"Unknown corner. Expected one of {CORNERS}. Received: corner={corner!r}")
    tagged = np.array(image, copy=True)
    height, width = tagged.shape[:2]
    side = max(2, int(round(fraction * min(height, width))))
    top = 1 if corner.startswith("top") else height - 1 - side
    left = 1 if corner.endswith("left") else width - 1 - side
    tagged[top : top + side, left : left + side] = 255
    return tagged


def generate_shapes_dataset(
    root,
    per_class: int = 500,
    image_size: int = 64,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    tag_class: str | None = None,
    tag_corner: str = "top_left",
) -> Path:
    """Writes the demo dataset: ``root/{train,val,test}/<class>/NNNN.png`` and the ground-truth object
    masks as ``root/masks/{split}/<class>/NNNN.png`` (255 on the object). Deterministic for a seed.

    ``tag_class``: every image of that class (all splits) gets a white tag in ``tag_corner`` (a planted
    shortcut; the masks still cover the object only). The shapes are the same as without a tag."""
    if tag_class is not None and tag_class not in DEMO_CLASSES:
        raise ValueError(f"Unknown tag class. Expected one of {DEMO_CLASSES}. Received: tag_class={tag_class!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_train = int(round(per_class * fractions[0]))
    n_val = int(round(per_class * fractions[1]))
    for kind in DEMO_CLASSES:
        for i in range(per_class):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            image, mask = render_shape(rng, kind, image_size)
            if kind == tag_class:
                image = add_corner_tag(image, tag_corner)
            name = f"{kind}_{i:04d}.png"
            for sub, array in (
                (Path(split) / kind, image),
                (Path("masks") / split / kind, mask.astype(np.uint8) * 255),
            ):
                (root / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / sub / name)
    return root


def mask_path_for(image_path, dataset_root) -> Path:
    """Where the ground-truth mask of a demo image lies (it may not exist for other datasets)."""
    relative = Path(image_path).resolve().relative_to(Path(dataset_root).resolve())
    return Path(dataset_root) / "masks" / relative
