"""Occlusion sensitivity (Zeiler & Fergus, 2014, https://arxiv.org/abs/1311.2901).

A grey square (``patch_size``, filled with 127.5 as tf-explain's ``apply_grey_patch``) slides over the
image every ``stride`` pixels (rows and columns; windows start at 0 and stop once one reaches the border,
where it is cut). Each window's score is the drop in the target class *probability*; each pixel gets the
mean drop over the windows covering it; maps are min-max normalised.

Occluded copies are built inside the graph, ``batch_size`` at a time, from one image and a window's
row/column masks, so memory stays at one batch of copies whatever the patch size or image count.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import graph
from .base import Cost, Explainer
from .common import Param, check_int, pick, resolve_classes, scale_min_max

FILL_VALUE = 127.5


def window_starts(size: int, patch_size: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride`` pixels until a window reaches the border."""
    starts = [0]
    while starts[-1] + patch_size < size:
        starts.append(starts[-1] + stride)
    return starts


def window_masks(size: int, patch_size: int, stride: int) -> np.ndarray:
    """(number of windows, size) float32: 1 where each window covers the axis."""
    starts = np.asarray(window_starts(size, patch_size, stride))[:, None]
    positions = np.arange(size)[None, :]
    return ((positions >= starts) & (positions < starts + patch_size)).astype(np.float32)


class OcclusionSensitivity(Explainer):
    name = "occlusion"
    title = "Occlusion sensitivity"
    description = "How much the class probability drops when a grey patch hides each region (model-agnostic, slow)."
    paper = "Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901"
    units = "drop in the class probability, averaged over the patches covering the pixel"
    signed = True
    params = {
        "patch_size": Param(8, "Side of the grey square, in pixels.", minimum=1),
        "stride": Param(None, "Step between patches, in pixels; None: patch_size.", minimum=1, nullable=True),
        "batch_size": Param(64, "Occluded copies per forward pass (bounds memory).", minimum=1),
    }
    fast_params = {"patch_size": 4}

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        patch = check_int(
            self.name,
            "patch_size",
            options["patch_size"],
            1,
            min(height, width),
            why=f" (the patch must fit the {height}x{width} image)",
        )
        stride = patch if options["stride"] is None else options["stride"]
        stride = check_int(self.name, "stride", stride, 1, patch, why=" (at most patch_size, to cover every pixel)")
        batch_size = check_int(self.name, "batch_size", options["batch_size"], 1)
        return {"patch_size": patch, "stride": stride, "batch_size": batch_size}

    def bounds(self, height, width):
        # Patches of at least 1/32 of the side keep occlusion to at most 32 x 32 = 1,024 forward passes;
        # copies per pass hold about 4 million pixels, so memory stays bounded at any input size.
        side = min(height, width)
        low, high = max(1, side // 32), max(1, side // 2)
        return {
            "patch_size": {"minimum": low, "maximum": high, "default": max(low, min(high, side // 8))},
            "stride": {"maximum": high},
            "batch_size": {"maximum": 1024, "default": int(max(1, min(64, 2**22 // (height * width))))},
        }

    def normalize(self, maps):
        return scale_min_max(maps)

    def cost(self, options, height, width):
        windows = len(window_starts(height, options["patch_size"], options["stride"])) * len(
            window_starts(width, options["patch_size"], options["stride"])
        )
        return Cost("forward", windows + 1, options["batch_size"])

    def attribute(self, model, images, class_index, options):
        score_model = graph.ScoreModel(model)
        height, width = int(images.shape[1]), int(images.shape[2])
        patch, stride, batch_size = options["patch_size"], options["stride"], options["batch_size"]
        rows = tf.constant(window_masks(height, patch, stride))  # (Ky, H)
        cols = tf.constant(window_masks(width, patch, stride))  # (Kx, W)
        n_cols = cols.shape[0]
        n_windows = rows.shape[0] * n_cols

        n_images = tf.shape(images)[0]
        probabilities = score_model(images).probabilities
        classes = resolve_classes(class_index, probabilities)
        base = pick(probabilities, classes)  # (N,)
        total = n_images * n_windows

        def body(start, sums):
            pair = tf.range(start, tf.minimum(start + batch_size, total))
            image, window = pair // n_windows, pair % n_windows
            row_mask = tf.gather(rows, window // n_cols)  # (B, H)
            col_mask = tf.gather(cols, window % n_cols)  # (B, W)
            mask = row_mask[:, :, None, None] * col_mask[:, None, :, None]  # (B, H, W, 1)
            occluded = tf.gather(images, image) * (1.0 - mask) + FILL_VALUE * mask
            drop = tf.gather(base, image) - pick(score_model(occluded).probabilities, tf.gather(classes, image))
            spread = drop[:, None, None] * row_mask[:, :, None] * col_mask[:, None, :]  # (B, H, W)
            return start + batch_size, sums + tf.math.unsorted_segment_sum(spread, image, n_images)

        _, sums = tf.while_loop(
            lambda start, _: start < total,
            body,
            (tf.constant(0), tf.zeros([n_images, height, width])),
            parallel_iterations=1,
        )
        counts = tf.reduce_sum(rows, axis=0)[:, None] * tf.reduce_sum(cols, axis=0)[None, :]  # (H, W)
        return sums / counts
