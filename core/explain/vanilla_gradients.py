"""Vanilla gradients, the saliency map of Simonyan et al. (2013, https://arxiv.org/abs/1312.6034).

``sum over colour channels of |d score / d pixel|``, the score taken before softmax, divided by its
maximum.
"""

from __future__ import annotations

import tensorflow as tf

from .gradients import GradientExplainer, score_and_gradient


class VanillaGradients(GradientExplainer):
    name = "vanilla_gradients"
    title = "Vanilla gradients"
    description = "How strongly each pixel's change would move the class score (fine-grained, noisy)."
    paper = "Simonyan et al. 2013, https://arxiv.org/abs/1312.6034"
    units = "|d score / d pixel| summed over the colour channels (score units per pixel value)"
    params = {}

    def gradient_map(self, score_model, images, classes, options):
        grads, _, _ = score_and_gradient(score_model, images, classes)
        return tf.reduce_sum(tf.abs(grads), axis=-1)
