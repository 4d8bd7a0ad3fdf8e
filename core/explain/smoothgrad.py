"""SmoothGrad (Smilkov et al., 2017, https://arxiv.org/abs/1706.03825), a wrapper of any gradient method.

The mean of a base gradient method's raw maps over ``samples`` noisy copies of each image (Gaussian noise
of standard deviation ``noise_level`` x 255, the pixel range). The copies go through the base method in
batches of ``batch_size`` (all of them in one pass when they fit). Noise sample ``s`` is drawn from
``(seed, s)``: the same for every image, whatever the batch, so a seed reproduces the map.
"""

from __future__ import annotations

import tensorflow as tf

from .base import Cost
from .common import ExplanationError, Param, check_choice, check_float, check_int, chunked_segment_sum, scale_abs_max
from .gradient_x_input import GradientXInput
from .gradients import GradientExplainer, gradient_batch_size, predicted_classes
from .integrated_gradients import IntegratedGradients
from .vanilla_gradients import VanillaGradients

BASE_METHODS: dict[str, GradientExplainer] = {
    explainer.name: explainer for explainer in (VanillaGradients(), GradientXInput(), IntegratedGradients())
}


class SmoothGrad(GradientExplainer):
    name = "smoothgrad"
    title = "SmoothGrad"
    description = "A gradient method averaged over noisy copies of the image: less speckle, same meaning."
    paper = "Smilkov et al. 2017, https://arxiv.org/abs/1706.03825"
    units = "the base method's raw map averaged over the noisy copies (its units; signed when the base method is)"
    randomized = True
    wraps_gradients = True
    params = {
        "base_method": Param(
            "vanilla_gradients",
            "Gradient method averaged (with its default parameters).",
            kind="choice",
            choices=tuple(BASE_METHODS),
        ),
        "samples": Param(25, "Noisy copies per image.", 1, maximum=1000),
        "noise_level": Param(
            0.15, "Noise standard deviation as a fraction of the 0-255 pixel range.", 0.0, kind="float", maximum=1.0
        ),
        "batch_size": Param(
            None, "Noisy copies per gradient pass (bounds memory); None: from the image size.", 1, nullable=True
        ),
        "seed": Param(0, "Random seed (the same seed gives the same map).", 0),
    }
    fast_params = {"samples": 3}

    def bounds(self, height, width):
        return {"batch_size": {"default": gradient_batch_size(height, width), "maximum": 1024}}

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        name = check_choice(self.name, "base_method", options["base_method"], tuple(BASE_METHODS))
        options["samples"] = check_int(self.name, "samples", options["samples"], 1, 1000)
        options["noise_level"] = check_float(self.name, "noise_level", options["noise_level"], 0.0, 1.0)
        if options["batch_size"] is None:
            options["batch_size"] = gradient_batch_size(height, width)
        options["batch_size"] = check_int(self.name, "batch_size", options["batch_size"], 1)
        options["seed"] = check_int(self.name, "seed", options["seed"], 0)
        try:
            base_options = BASE_METHODS[name].check_params(model, height, width)
        except ExplanationError as exc:
            raise ExplanationError(f"{self.name}: base_method={name!r} cannot run: {exc}") from exc
        options["base_options"] = tuple(sorted(base_options.items()))
        return options

    def normalize(self, maps):
        return scale_abs_max(maps)  # the base method's own scaling for every base offered (>= 0 or signed)

    def gradient_map(self, score_model, images, classes, options):
        base = BASE_METHODS[options["base_method"]]
        base_options = dict(options["base_options"])
        samples, sigma, seed = options["samples"], options["noise_level"] * 255.0, options["seed"]
        classes = predicted_classes(score_model, images, classes)
        shape = [images.shape[1], images.shape[2], 3]
        n_images = tf.shape(images)[0]

        def noisy_maps(items):
            image, sample = items // samples, items % samples
            noise = tf.map_fn(
                lambda s: tf.random.stateless_normal(shape, seed=tf.stack([seed, s])),
                sample,
                fn_output_signature=tf.float32,
            )
            copies = tf.gather(images, image) + sigma * noise
            return base.gradient_map(score_model, copies, tf.gather(classes, image), base_options), image

        sums = chunked_segment_sum(n_images * samples, options["batch_size"], noisy_maps, n_images, shape[:2])
        return sums / samples

    def cost(self, options, height, width):
        base = BASE_METHODS[options["base_method"]].cost(dict(options["base_options"]), height, width)
        return Cost("gradient", options["samples"] * base.copies, options["batch_size"])
