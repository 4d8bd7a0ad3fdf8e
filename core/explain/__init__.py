"""Explanations for Keras image classifiers: one contract for every method.

    maps = explain(model, images, "gradcam")             # (N, H, W) float32 in [0, 1]

``images`` is a batch (N, H, W, 3) of pixel values 0-255; the model carries its own preprocessing.
Maps are raw attributions, not pictures: overlays and colormaps live in `core.visualize`.

Adding a method: a small `Explainer` subclass in its own file, plus its module's name in `_METHOD_MODULES`.
The registry imports each module and registers the `Explainer` subclass it defines (the one with a
``name``); the page, the command line, the benchmark and the tests find it there.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np

from .base import Cost, Explainer, ExplanationError, Param, cached_functions, clear_cache
from .gradcam import GradCAM
from .graph import conv_layer_names, default_layer_name
from .occlusion import OcclusionSensitivity
from .vanilla_gradients import VanillaGradients

_METHOD_MODULES = (
    "gradcam",
    "occlusion",
    "vanilla_gradients",
    "gradcam_plus_plus",
    "score_cam",
    "smoothgrad",
    "integrated_gradients",
    "gradient_x_input",
    "lime",
    "rise",
)
"""One line per method, in the order they are offered: the module (file) in this package defining it."""


def _discover(module_names) -> dict[str, Explainer]:
    explainers = {}
    for module_name in module_names:
        module = importlib.import_module(f"{__name__}.{module_name}")
        defined = [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, Explainer) and cls.__module__ == module.__name__ and cls.name
        ]
        if len(defined) != 1:
            raise ImportError(
                f"Expected one named Explainer subclass in {module.__name__}. Received: {[c.__name__ for c in defined]}"
            )
        explainer = defined[0]()
        if explainer.name in explainers:
            raise ImportError(f"Two explanation methods named {explainer.name!r}")
        explainers[explainer.name] = explainer
    return explainers


_EXPLAINERS: dict[str, Explainer] = _discover(_METHOD_MODULES)

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


def describe(method: str, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """What a UI or a command line needs to offer ``method``, without per-method code.

    Args:
        method: one of `METHODS`.
        input_size: the model's (height, width); when given, image-dependent bounds and defaults
            (occlusion's patch size, say) are filled in for that size.

    Returns:
        ``{"name", "title", "description", "paper", "units", "signed", "randomized",
        "params": {name: {"kind", "default", "help", "minimum", "maximum", "choices", "nullable"}}}``;
        ``kind`` is one of "int", "float", "bool", "choice", "layer".
    """
    explainer = get_explainer(method)
    overrides = explainer.bounds(*input_size) if input_size is not None else {}
    params = {}
    for key, spec in explainer.params.items():
        entry = {
            "kind": spec.kind,
            "default": spec.default,
            "help": spec.help,
            "minimum": spec.minimum,
            "maximum": spec.maximum,
            "choices": list(spec.choices),
            "nullable": spec.nullable,
        }
        entry.update(overrides.get(key, {}))
        params[key] = entry
    return {
        "name": explainer.name,
        "title": explainer.title,
        "description": explainer.description,
        "paper": explainer.paper,
        "units": explainer.units,
        "signed": explainer.signed,
        "randomized": explainer.randomized,
        "params": params,
    }


def explain(model, images, method: str, class_index=None, normalize: bool = True, **params) -> np.ndarray:
    """Explains a Keras classifier's decisions on a batch of images.

    Args:
        model: a Functional or Sequential `keras.Model` taking pixels 0-255, with one (N, C) output
            (softmax, sigmoid or logits; a nested backbone used as a layer is fine).
        images: (N, H, W, 3) pixel values 0-255, uint8 or float, H and W the model's input size.
        method: one of `METHODS`.
        class_index: None (each image's predicted class), an int (every image), or N ints (one per image).
        normalize: True (the default): maps in [0, 1]. False: the method's raw attributions (N, H, W),
            signed where the method is signed, in the units `describe(method)["units"]` states.
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
    return get_explainer(method).explain(model, images, class_index, normalize=normalize, **params)


__all__ = [
    "METHODS",
    "Cost",
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
