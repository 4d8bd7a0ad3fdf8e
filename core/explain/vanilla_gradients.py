"""Vanilla gradients, the saliency map of Simonyan et al. (2013, https://arxiv.org/abs/1312.6034).

``sum over colour channels of |d score / d pixel|``, the score taken before softmax, divided by its
maximum.
"""

from __future__ import annotations

import tensorflow as tf

from . import graph
from .base import Explainer, pick, resolve_classes


class VanillaGradients(Explainer):
    name = "vanilla_gradients"
    title = "Vanilla gradients"
    description = "How strongly each pixel's change would move the class score (fine-grained, noisy)."
    paper = "Simonyan et al. 2013, https://arxiv.org/abs/1312.6034"
    units = "|d score / d pixel| summed over the colour channels (score units per pixel value)"
    params = {}

    def attribute(self, model, images, class_index, options):
        score_model = graph.ScoreModel(model)
        with tf.GradientTape() as tape:
            tape.watch(images)
            forward = score_model(images)
            score = pick(forward.scores, resolve_classes(class_index, forward.probabilities))
        return tf.reduce_sum(tf.abs(tape.gradient(score, images)), axis=-1)
