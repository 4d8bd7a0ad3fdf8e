"""Integrated Gradients (Sundararajan et al., 2017, https://arxiv.org/abs/1703.01365).

``(x - x') * integral_0^1 d score(x' + a (x - x')) / dx da``, ``x'`` the baseline, the score before softmax,
the integral by the trapezoid rule over ``steps`` intervals (``steps + 1`` gradients per image, computed
``batch_size`` at a time). The raw map is the attributions' sum over the colour channels, signed; it sums
to ``score(x) - score(x')`` (completeness), up to the rule's error, which shrinks as ``steps`` grows.
"""

from __future__ import annotations

import tensorflow as tf

from .base import Cost
from .common import Param, check_choice, check_int, chunked_segment_sum, scale_abs_max
from .gradients import (
    BASELINE_PARAM,
    BASELINES,
    SEED_PARAM,
    GradientExplainer,
    baseline_images,
    gradient_batch_size,
    predicted_classes,
    score_and_gradient,
)


class IntegratedGradients(GradientExplainer):
    name = "integrated_gradients"
    title = "Integrated Gradients"
    description = "Each pixel's share of the score change from a baseline image to this one (sums to that change)."
    paper = "Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365"
    units = "attribution summed over the colour channels, in score units (the map sums to score(image) - score(baseline)); signed"
    signed = True
    params = {
        "baseline": BASELINE_PARAM,
        "steps": Param(
            32, "Intervals of the path integral (trapezoid rule); more: closer to completeness.", 1, maximum=1024
        ),
        "batch_size": Param(
            None, "Path images per gradient pass (bounds memory); None: from the image size.", 1, nullable=True
        ),
        "seed": SEED_PARAM,
    }
    fast_params = {"steps": 4}

    def bounds(self, height, width):
        return {"batch_size": {"default": gradient_batch_size(height, width), "maximum": 1024}}

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        options["baseline"] = check_choice(self.name, "baseline", options["baseline"], BASELINES)
        options["steps"] = check_int(self.name, "steps", options["steps"], 1, 1024)
        if options["batch_size"] is None:
            options["batch_size"] = gradient_batch_size(height, width)
        options["batch_size"] = check_int(self.name, "batch_size", options["batch_size"], 1)
        options["seed"] = check_int(self.name, "seed", options["seed"], 0)
        return options

    def normalize(self, maps):
        return scale_abs_max(maps)

    def gradient_map(self, score_model, images, classes, options):
        steps = options["steps"]
        points = steps + 1
        classes = predicted_classes(score_model, images, classes)
        reference = baseline_images(images, options["baseline"], options["seed"])
        alphas = tf.linspace(0.0, 1.0, points)
        weights = tf.concat([[0.5], tf.ones([points - 2]), [0.5]], axis=0) / steps  # trapezoid rule
        n_images = tf.shape(images)[0]

        def path_gradients(items):
            image, point = items // points, items % points
            start, end = tf.gather(reference, image), tf.gather(images, image)
            alpha = tf.gather(alphas, point)[:, None, None, None]
            grads, _, _ = score_and_gradient(score_model, start + alpha * (end - start), tf.gather(classes, image))
            return grads * tf.gather(weights, point)[:, None, None, None], image

        shape = [images.shape[1], images.shape[2], 3]
        mean_grads = chunked_segment_sum(n_images * points, options["batch_size"], path_gradients, n_images, shape)
        return tf.reduce_sum((images - reference) * mean_grads, axis=-1)

    def cost(self, options, height, width):
        return Cost("gradient", options["steps"] + 1, options["batch_size"])
