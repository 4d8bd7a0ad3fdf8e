"""LIME (Ribeiro et al., 2016, https://arxiv.org/abs/1602.04938) with the reference ``lime`` package.

``lime.lime_image.LimeImageExplainer`` does the method: superpixels (here SLIC, ``segments`` of them),
``samples`` random on/off patterns (hidden superpixels take their mean colour), a cosine-distance kernel and
a ridge regression of the class probability on the patterns. Two things are ours: the classifier is the
model's compiled, batched predict (`base._EagerFunction.predict`), and the perturbed images are built with
one vectorised ``where`` per batch instead of the package's per-sample Python loop (same random patterns,
same images, checked in the tests). The raw map gives each pixel its superpixel's regression weight, signed;
the normalised map shows the positive part (evidence for the class). ``seed`` fixes the patterns.
"""

from __future__ import annotations

import numpy as np

from .base import Cost, Explainer
from .common import Param, auto_batch_size, check_int, scale_positive

_PIXELS_PER_PASS = 2**22


def segment(image: np.ndarray, segments: int) -> np.ndarray:
    """SLIC superpixels of a 0-255 image, labelled 0..n-1 (what ``lime`` expects of its segments)."""
    from skimage.segmentation import slic

    labels = slic(image / 255.0, n_segments=segments, compactness=10, sigma=1, start_label=0)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _lime_explainer_class():
    from lime import lime_image

    class BatchedLimeImageExplainer(lime_image.LimeImageExplainer):
        """`LimeImageExplainer` whose neighbourhood images are built a batch at a time (no Python loop)."""

        def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
            n_features = np.unique(segments).shape[0]
            data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
            data[0, :] = 1
            labels = []
            for start in range(0, num_samples, batch_size):
                keep = data[start : start + batch_size].astype(bool)[:, segments]  # (B, H, W)
                labels.extend(classifier_fn(np.where(keep[..., None], image, fudged_image)))
            return data, np.array(labels)

    return BatchedLimeImageExplainer


class LIME(Explainer):
    name = "lime"
    title = "LIME"
    description = "Which superpixels a local linear model of the prediction finds for the class (model-agnostic)."
    paper = "Ribeiro et al. 2016, https://arxiv.org/abs/1602.04938"
    units = "the pixel's superpixel weight in LIME's local linear model of the class probability; signed"
    signed = True
    randomized = True
    in_graph = False
    params = {
        "samples": Param(1000, "Perturbed images the local model is fitted on.", 10, maximum=20000),
        "segments": Param(50, "Superpixels (SLIC) the image is cut into, about.", 2, maximum=1000),
        "batch_size": Param(
            None, "Perturbed images per forward pass (bounds memory); None: from the image size.", 1, nullable=True
        ),
        "seed": Param(0, "Random seed (the same seed gives the same map).", 0),
    }
    fast_params = {"samples": 60, "segments": 8}

    def bounds(self, height, width):
        return {"batch_size": {"default": auto_batch_size(height, width, _PIXELS_PER_PASS, 64), "maximum": 1024}}

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        options["samples"] = check_int(self.name, "samples", options["samples"], 10, 20000)
        options["segments"] = check_int(self.name, "segments", options["segments"], 2, 1000)
        if options["batch_size"] is None:
            options["batch_size"] = auto_batch_size(height, width, _PIXELS_PER_PASS, 64)
        options["batch_size"] = check_int(self.name, "batch_size", options["batch_size"], 1)
        options["seed"] = check_int(self.name, "seed", options["seed"], 0)
        return options

    def normalize(self, maps):
        return scale_positive(maps)

    def attribute_eager(self, predict, images, classes, options):
        explainer_class = _lime_explainer_class()
        maps = np.zeros(images.shape[:3], np.float32)
        for i, (image, class_index) in enumerate(zip(images, classes)):
            segments = segment(image, options["segments"])
            explanation = explainer_class(random_state=options["seed"]).explain_instance(
                image,
                predict,
                labels=(int(class_index),),
                top_labels=None,
                num_samples=options["samples"],
                batch_size=options["batch_size"],
                segmentation_fn=lambda _, segments=segments: segments,
            )
            weights = np.zeros(int(segments.max()) + 1, np.float32)
            for feature, weight in explanation.local_exp[int(class_index)]:
                weights[feature] = weight
            maps[i] = weights[segments]
        return maps

    def cost(self, options, height, width):
        return Cost("forward", options["samples"], options["batch_size"])
