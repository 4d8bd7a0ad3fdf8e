"""Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391).

Channel weights: the spatial mean of ``d score / d A^k``, the score taken before softmax (or the
probability, with ``use_softmax``). The rest of the pipeline is `cam.CAMExplainer`'s.
"""

from __future__ import annotations

import tensorflow as tf

from .cam import LAYER_PARAM, CAMExplainer
from .common import Param, check_bool


class GradCAM(CAMExplainer):
    name = "gradcam"
    title = "Grad-CAM"
    description = "Where the target layer's features raise the class score (coarse, class-discriminative)."
    paper = "Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391"
    units = "ReLU of the gradient-weighted sum of the layer's channels (score units), upsampled"
    params = {
        "layer_name": LAYER_PARAM,
        "use_guided_grads": Param(
            False, "Keep only positive gradients where activations are positive (tf-explain's default).", kind="bool"
        ),
        "use_softmax": Param(False, "Differentiate the probability (after softmax) instead of the score.", kind="bool"),
    }

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        for key in ("use_guided_grads", "use_softmax"):
            options[key] = check_bool(self.name, key, options[key])
        return options

    def channel_weights(self, inputs):
        grads = inputs.grads
        if inputs.options["use_guided_grads"]:  # tf-explain's GradCAM.get_gradients_and_filters
            grads = tf.cast(inputs.activations > 0, tf.float32) * tf.cast(grads > 0, tf.float32) * grads
        return tf.reduce_mean(grads, axis=(1, 2))
