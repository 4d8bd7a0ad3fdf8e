"""RISE (Petsiuk et al., 2018, https://arxiv.org/abs/1806.07421): randomized input sampling.

``masks`` random binary grids of cells ``cell_size`` pixels wide (each cell kept with ``keep_probability``),
upsampled bilinearly to one cell more than the image and cropped at a random shift of up to one cell, so
masks are smooth and their edges fall anywhere. Each masked image (``image * mask``) is scored by the class
probability; the map is ``sum_i p_c(image * M_i) M_i / (masks * keep_probability)``, the expected class
probability when the pixel is kept. Masks are drawn from ``seed`` (the same for every image) and scored
``batch_size`` copies per forward pass, all inside the compiled graph.
"""

from __future__ import annotations

import math

import tensorflow as tf

from . import graph
from .base import Cost, Explainer
from .common import (
    Param,
    auto_batch_size,
    check_float,
    check_int,
    chunked_segment_sum,
    pick,
    predicted_classes,
    scale_min_max,
)

_PIXELS_PER_PASS = 2**22


def default_cell_size(height: int, width: int) -> int:
    """The paper's 7 x 7 grid on the shorter side."""
    return max(1, math.ceil(min(height, width) / 7))


def masks_for(items: tf.Tensor, grids: tf.Tensor, shifts: tf.Tensor, cell: int, height: int, width: int):
    """(B, H, W) smooth masks number ``items`` from their grids (M, gy, gx) and shifts (M, 2)."""
    gy, gx = grids.shape[1], grids.shape[2]
    up = tf.image.resize(tf.gather(grids, items)[..., None], (gy * cell, gx * cell), method="bilinear")[..., 0]
    shift = tf.gather(shifts, items)
    rows = shift[:, :1] + tf.range(height)[None, :]
    cols = shift[:, 1:] + tf.range(width)[None, :]
    up = tf.gather(up, rows, axis=1, batch_dims=1)
    return tf.gather(up, cols, axis=2, batch_dims=1)


def random_masks(count: int, cell: int, keep_probability: float, seed: int, height: int, width: int):
    """The grids (count, gy, gx) and shifts (count, 2) of ``count`` masks, from ``seed``."""
    gy, gx = math.ceil(height / cell) + 1, math.ceil(width / cell) + 1
    grids = tf.cast(tf.random.stateless_uniform([count, gy, gx], seed=[seed, 0]) < keep_probability, tf.float32)
    shifts = tf.random.stateless_uniform([count, 2], seed=[seed, 1], minval=0, maxval=cell, dtype=tf.int32)
    return grids, shifts


class RISE(Explainer):
    name = "rise"
    title = "RISE"
    description = "The class probability expected when each pixel is kept, over many random masks (model-agnostic)."
    paper = "Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421"
    units = "expected class probability when the pixel is kept (probability-weighted mean of the masks)"
    randomized = True
    params = {
        "masks": Param(1000, "Random masks scored (the paper uses 4000 to 8000 at 224 px).", 1, maximum=20000),
        "cell_size": Param(
            None, "Mask grid cell side in pixels; None: a 7 x 7 grid on the shorter side.", 1, nullable=True
        ),
        "keep_probability": Param(0.5, "Probability that a grid cell is kept.", 0.01, kind="float", maximum=1.0),
        "batch_size": Param(
            None, "Masked images per forward pass (bounds memory); None: from the image size.", 1, nullable=True
        ),
        "seed": Param(0, "Random seed (the same seed gives the same map).", 0),
    }
    fast_params = {"masks": 64}

    def bounds(self, height, width):
        side = min(height, width)
        return {
            "cell_size": {"maximum": side, "default": default_cell_size(height, width)},
            "batch_size": {"default": auto_batch_size(height, width, _PIXELS_PER_PASS, 64), "maximum": 1024},
        }

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        options["masks"] = check_int(self.name, "masks", options["masks"], 1, 20000)
        cell = options["cell_size"]
        cell = default_cell_size(height, width) if cell is None else cell
        options["cell_size"] = check_int(
            self.name, "cell_size", cell, 1, min(height, width), why=f" (a cell must fit the {height}x{width} image)"
        )
        options["keep_probability"] = check_float(self.name, "keep_probability", options["keep_probability"], 0.01, 1.0)
        if options["batch_size"] is None:
            options["batch_size"] = auto_batch_size(height, width, _PIXELS_PER_PASS, 64)
        options["batch_size"] = check_int(self.name, "batch_size", options["batch_size"], 1)
        options["seed"] = check_int(self.name, "seed", options["seed"], 0)
        return options

    def normalize(self, maps):
        return scale_min_max(maps)

    def attribute(self, model, images, class_index, options):
        score_model = graph.ScoreModel(model)
        height, width = images.shape[1], images.shape[2]
        count, cell, keep = options["masks"], options["cell_size"], options["keep_probability"]
        grids, shifts = random_masks(count, cell, keep, options["seed"], height, width)
        classes = predicted_classes(lambda x: score_model(x).probabilities, images, class_index)
        n_images = tf.shape(images)[0]

        def weighted_masks(items):
            image = items // count
            masks = masks_for(items % count, grids, shifts, cell, height, width)
            probability = pick(
                score_model(tf.gather(images, image) * masks[..., None]).probabilities, tf.gather(classes, image)
            )
            return probability[:, None, None] * masks, image

        sums = chunked_segment_sum(n_images * count, options["batch_size"], weighted_masks, n_images, [height, width])
        return sums / (count * keep)

    def cost(self, options, height, width):
        return Cost("forward", options["masks"], options["batch_size"])
