"""Score-CAM (Wang et al., 2020, https://arxiv.org/abs/1910.01279).

Channel weights without gradients: each channel ``A^k``, upsampled to the input size and min-max normalised
to [0, 1], masks the image (``image * mask``); its weight is the increase of the class probability (after
softmax) over the baseline, the fully masked (black) image: ``w_k = p_c(image * mask_k) - p_c(black)``.
Only the ``max_channels`` channels with the highest mean activation are scored (None: all), ``batch_size``
masked copies per forward pass, so memory stays bounded whatever the layer's width.
"""

from __future__ import annotations

import tensorflow as tf

from . import graph
from .base import Cost, bare_floor
from .cam import LAYER_PARAM, CAMExplainer, upsample
from .common import Param, auto_batch_size, check_int, chunked_segment_sum, pick, scale_min_max

_PIXELS_PER_PASS = 2**22  # about 80 copies of 224 x 224 per forward pass


class ScoreCAM(CAMExplainer):
    name = "score_cam"
    title = "Score-CAM"
    description = "How much each feature map, used as a mask on the image, raises the class probability."
    paper = "Wang et al. 2020, https://arxiv.org/abs/1910.01279"
    units = "ReLU of the channels weighted by the probability increase they cause over a black image, upsampled"
    needs_gradients = False
    params = {
        "layer_name": LAYER_PARAM,
        "max_channels": Param(
            64, "Channels scored, those of highest mean activation; None: all (slow on wide layers).", 1, nullable=True
        ),
        "batch_size": Param(
            None, "Masked copies per forward pass (bounds memory); None: from the image size.", 1, nullable=True
        ),
    }
    fast_params = {"max_channels": 8}

    def bounds(self, height, width):
        return {"batch_size": {"default": auto_batch_size(height, width, _PIXELS_PER_PASS, 64), "maximum": 1024}}

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        if options["max_channels"] is not None:
            options["max_channels"] = check_int(self.name, "max_channels", options["max_channels"], 1)
        if options["batch_size"] is None:
            options["batch_size"] = auto_batch_size(height, width, _PIXELS_PER_PASS, 64)
        options["batch_size"] = check_int(self.name, "batch_size", options["batch_size"], 1)
        return options

    def channel_weights(self, inputs):
        activations, images, classes = inputs.activations, inputs.images, inputs.classes
        height, width = images.shape[1], images.shape[2]
        channels = activations.shape[-1]
        chosen = channels if inputs.options["max_channels"] is None else min(channels, inputs.options["max_channels"])
        n_images = tf.shape(images)[0]
        # (N, chosen) channel indices, highest mean activation first
        order = tf.math.top_k(tf.reduce_mean(activations, axis=(1, 2)), k=chosen, sorted=True).indices
        black = pick(inputs.score_model(tf.zeros_like(images)).probabilities, classes)  # (N,)

        def score(items):
            image, rank = items // chosen, items % chosen
            channel = tf.gather_nd(order, tf.stack([image, rank], axis=1))
            maps = tf.gather_nd(tf.transpose(activations, (0, 3, 1, 2)), tf.stack([image, channel], axis=1))
            masks = scale_min_max(upsample(maps, height, width))  # (B, H, W) in [0, 1]
            masked = tf.gather(images, image) * masks[..., None]
            gain = pick(inputs.score_model(masked).probabilities, tf.gather(classes, image)) - tf.gather(black, image)
            return gain[:, None] * tf.one_hot(channel, channels), image

        return chunked_segment_sum(n_images * chosen, inputs.options["batch_size"], score, n_images, [channels])

    def floor(self, model, options, height, width):
        """The forward passes alone: the tapped pass, the black baseline, one per scored channel."""
        channels = graph.layer_at(model, options["layer_name"]).output.shape[-1]
        chosen = min(channels, options["max_channels"] or channels)
        return bare_floor(model, Cost("forward", 2 + chosen, options["batch_size"]))
