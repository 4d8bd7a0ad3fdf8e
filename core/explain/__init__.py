"""Explanations for Keras image classifiers: one contract for every method.

    maps = explain(model, images, "gradcam")             # (N, H, W) float32 in [0, 1]

``images`` is a batch (N, H, W, 3) of pixel values 0-255; the model carries its own preprocessing.
Maps are raw attributions, not pictures: overlays and colormaps live in `core.visualize`.

Adding a method: a small `Explainer` subclass in its own file, plus one entry in `_EXPLAINERS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Explainer, ExplanationError, Param, cached_functions, clear_cache
from .gradcam import GradCAM
from .graph import conv_layer_names, default_layer_name
from .occlusion import OcclusionSensitivity
from .vanilla_gradients import VanillaGradients

_EXPLAINERS: dict[str, Explainer] = {
    explainer.name: explainer for explainer in (GradCAM(), OcclusionSensitivity(), VanillaGradients())
}

METHODS: tuple[str, ...] = tuple(_EXPLAINERS)
"""Names accepted by `explain`'s ``method``."""

PARAMS: dict[str, dict[str, Any]] = {
    name: {key: spec.default for key, spec in explainer.params.items()} for name, explainer in _EXPLAINERS.items()
}
"""Per-method parameter defaults, e.g. ``PARAMS["occlusion"]["patch_size"]``."""


def get_explainer(method: str) -> Explainer:
    """The registered `Explainer` for ``method``; raises `ExplanationError` for an unknown name."""
    try:
        return _EXPLAINERS[method]
    except (KeyError, TypeError):
        raise ExplanationError(
            f"Unknown explanation method. Expected one of {METHODS}. Received: method={method!r}"
        ) from None


def describe(method: str) -> dict[str, Any]:
    """What a UI needs to offer ``method``: its title, a one-line description and its parameters.

    Returns:
        ``{"name", "title", "description", "params": {name: {"default", "help", "minimum"}}}``.
    """
    explainer = get_explainer(method)
    return {
        "name": explainer.name,
        "title": explainer.title,
        "description": explainer.description,
        "params": {
            key: {"default": spec.default, "help": spec.help, "minimum": spec.minimum}
            for key, spec in explainer.params.items()
        },
    }


def explain(model, images, method: str, class_index=None, **params) -> np.ndarray:
    """Explains a Keras classifier's decisions on a batch of images.

    Args:
        model: a Functional or Sequential `keras.Model` taking pixels 0-255, with one (N, C) output
            (softmax, sigmoid or logits; a nested backbone used as a layer is fine).
        images: (N, H, W, 3) pixel values 0-255, uint8 or float, H and W the model's input size.
        method: one of `METHODS`.
        class_index: None (each image's predicted class), an int (every image), or N ints (one per image).
        **params: the method's parameters, see `PARAMS` / `describe` (e.g. ``layer_name`` for Grad-CAM,
            ``patch_size``, ``stride``, ``batch_size`` for occlusion).

    Returns:
        float32 array (N, H, W) in [0, 1], never NaN; a map with no signal is all zeros.

    Raises:
        ExplanationError: unknown method or parameter, bad images or class_index, or a method that cannot
            apply to the model (Grad-CAM without a 4-D layer); the message says what was received.

    Example:
        >>> maps = explain(model, images, "occlusion", class_index=2, patch_size=16)
    """
    return get_explainer(method).explain(model, images, class_index, **params)


__all__ = [
    "METHODS",
    "PARAMS",
    "Explainer",
    "ExplanationError",
    "GradCAM",
    "OcclusionSensitivity",
    "Param",
    "VanillaGradients",
    "cached_functions",
    "clear_cache",
    "conv_layer_names",
    "default_layer_name",
    "describe",
    "explain",
    "get_explainer",
]
