"""Gradient x Input (Shrikumar et al., 2016, https://arxiv.org/abs/1605.01713).

``sum over colour channels of (d score / d pixel) * (pixel - baseline pixel)``, the score before softmax:
a first-order estimate of how much each pixel's difference from the baseline adds to the score. Signed.
"""

from __future__ import annotations

import tensorflow as tf

from .common import check_choice, check_int, scale_abs_max
from .gradients import BASELINE_PARAM, BASELINES, SEED_PARAM, GradientExplainer, baseline_images, score_and_gradient


class GradientXInput(GradientExplainer):
    name = "gradient_x_input"
    title = "Gradient × Input"
    description = "Gradient times the pixel's difference from a baseline: which pixels push the score up or down."
    paper = "Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713"
    units = "(d score / d pixel) x (pixel - baseline) summed over the colour channels (score units); signed"
    signed = True
    params = {"baseline": BASELINE_PARAM, "seed": SEED_PARAM}

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        options["baseline"] = check_choice(self.name, "baseline", options["baseline"], BASELINES)
        options["seed"] = check_int(self.name, "seed", options["seed"], 0)
        return options

    def normalize(self, maps):
        return scale_abs_max(maps)

    def gradient_map(self, score_model, images, classes, options):
        grads, _, _ = score_and_gradient(score_model, images, classes)
        reference = baseline_images(images, options["baseline"], options["seed"])
        return tf.reduce_sum(grads * (images - reference), axis=-1)
