"""Grad-CAM++ (Chattopadhay et al., 2018, https://arxiv.org/abs/1710.11063).

Channel weights ``w_k = sum_ij alpha_ij^k ReLU(d Y / d A_ij^k)`` with the paper's closed-form alphas for
``Y = exp(S)``, ``S`` the class score before softmax (its eq. 19): with ``g = d S / d A``, the second and
third derivatives of ``Y`` are ``exp(S) g^2`` and ``exp(S) g^3`` (a piecewise-linear network), so

    alpha_ij^k = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3)        (0 where the denominator is 0)

and ``d Y / d A = exp(S) g``. The factor ``exp(S)`` is the same for every pixel of an image: it is left out
(it would overflow float32 for scores above ~88), so the raw map is the paper's map divided by ``exp(S)``.
"""

from __future__ import annotations

import tensorflow as tf

from .cam import CAMExplainer


class GradCAMPlusPlus(CAMExplainer):
    name = "gradcam_plus_plus"
    title = "Grad-CAM++"
    description = "Grad-CAM weighting each location by its own share of the gradient: finds several instances."
    paper = "Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063"
    units = "ReLU of the alpha-weighted sum of the layer's channels (the paper's map divided by exp(score))"

    def channel_weights(self, inputs):
        g, activations = inputs.grads, inputs.activations
        g2 = tf.square(g)
        denominator = 2.0 * g2 + tf.reduce_sum(activations, axis=(1, 2), keepdims=True) * g2 * g
        alphas = tf.where(denominator != 0.0, g2 / tf.where(denominator != 0.0, denominator, 1.0), 0.0)
        return tf.reduce_sum(alphas * tf.nn.relu(g), axis=(1, 2))
