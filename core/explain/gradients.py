"""The gradient family's shared step: the class score (before softmax) and its gradient with respect to the
input pixels, plus the baselines that Integrated Gradients and Gradient x Input start from.

A gradient method subclasses `GradientExplainer` and writes `GradientExplainer.gradient_map`: per-pixel maps
for a batch whose classes are known. `GradientExplainer.attribute` resolves the classes and calls it; a
wrapper (SmoothGrad) calls it on noisy copies.
"""

from __future__ import annotations

import math
from typing import ClassVar

import tensorflow as tf

from . import common, graph
from .base import Explainer
from .common import Param, auto_batch_size, pick, resolve_classes

BASELINES = ("black", "grey", "blur", "noise")
GREY = 127.5
GRADIENT_PIXELS_PER_PASS = 2**20  # about 20 copies of 224 x 224 per forward + backward pass

BASELINE_PARAM = Param(
    "black",
    "Reference image: black (0), grey (127.5), blur (the image, Gaussian-blurred), noise (uniform 0-255, from seed).",
    kind="choice",
    choices=BASELINES,
)
SEED_PARAM = Param(0, "Random seed (the same seed gives the same map).", 0)


def score_and_gradient(score_model: graph.ScoreModel, images: tf.Tensor, classes: tf.Tensor):
    """``(d score / d images, score, classes)``; ``classes`` may hold -1 (the predicted class)."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        forward = score_model(images)
        classes = resolve_classes(classes, forward.probabilities)
        score = pick(forward.scores, classes)
    return tape.gradient(score, images), score, classes


def predicted_classes(score_model: graph.ScoreModel, images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """``classes`` with -1 replaced by the prediction; runs the model only when some entry is -1."""
    return common.predicted_classes(lambda x: score_model(x).probabilities, images, classes)


def blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of (N, H, W, 3), borders mirrored."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    height, width = images.shape[1], images.shape[2]
    pad_y, pad_x = min(radius, height), min(radius, width)
    x = tf.pad(images, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="SYMMETRIC")
    rows = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
    cols = tf.tile(kernel[None, :, None, None], [1, 1, 3, 1])
    if pad_y < radius or pad_x < radius:  # tiny images: the rest of the border as zeros
        x = tf.pad(x, [[0, 0], [radius - pad_y] * 2, [radius - pad_x] * 2, [0, 0]], mode="CONSTANT")
    x = tf.nn.depthwise_conv2d(x, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, cols, [1, 1, 1, 1], "VALID")


def baseline_images(images: tf.Tensor, baseline: str, seed: int) -> tf.Tensor:
    """The reference image of each input: same shape as ``images``."""
    if baseline == "black":
        return tf.zeros_like(images)
    if baseline == "grey":
        return tf.fill(tf.shape(images), GREY)
    if baseline == "blur":
        return blur(images, sigma=max(1.0, min(images.shape[1], images.shape[2]) / 10.0))
    noise = tf.random.stateless_uniform(images.shape[1:], seed=[seed, 0], minval=0.0, maxval=255.0)
    return tf.broadcast_to(noise, tf.shape(images))


def gradient_batch_size(height: int, width: int) -> int:
    return auto_batch_size(height, width, GRADIENT_PIXELS_PER_PASS, 64)


class GradientExplainer(Explainer):
    """Base of the methods built on input gradients; subclasses write `gradient_map`."""

    wraps_gradients: ClassVar[bool] = False  # a wrapper of other gradient methods (not offered to itself)

    def gradient_map(self, score_model: graph.ScoreModel, images: tf.Tensor, classes: tf.Tensor, options: dict):
        """Raw (N, H, W) maps of ``images`` for ``classes`` (int32 (N,), -1 = predicted); in the graph."""
        raise NotImplementedError

    def attribute(self, model, images, class_index, options):
        return self.gradient_map(graph.ScoreModel(model), images, class_index, options)
