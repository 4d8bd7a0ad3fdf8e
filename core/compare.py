"""Explanation methods side by side: what the Explainer page and ``python -m core explain`` both show.

* `explain_batch` / `explain_side_by_side`: any list of methods, with per-method parameters, on a batch
  of images (or one); each `MethodResult` carries the normalised map, the raw map with its range and
  units, the time, and the error when the method cannot apply.
* `compare_models`: the same image and methods on two (or more) models, each at its own input size.
* `map_to_original` / `display_image`: maps computed at the model's input size, shown at the original
  image's size and aspect ratio (a 200x150 upload stays 4:3).
* `explanation_files`: the PNGs, ``.npy``/``.npz`` maps and the JSON report of one image, as bytes.

No Streamlit here, and no per-method code: parameters come from `core.explain.describe`.
"""

from __future__ import annotations

import io
import json
import platform
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from core.visualize import colorize, fit_within, overlay, png_bytes, resize_image, resize_map

ZERO_SIGNAL = 1e-6
"""A raw map whose largest absolute value is below this is flagged as carrying no signal."""
WEAK_PROBABILITY = 0.01
"""Explaining a class the model gives less than this probability is flagged as weak."""


@dataclass
class MethodResult:
    """One method's explanation of one image.

    Attributes:
        method: the method's name (one of `core.explain.METHODS`).
        saliency: float32 (H, W) in [0, 1] at the model's input size; None when the method failed.
        seconds: time spent on this image (for a batch: the batch's time divided by its size).
        error: why the method could not apply, or None.
        raw: the raw map (H, W) float32, ``explain(..., normalize=False)``, in ``units``.
        units: what one raw value measures; ``signed``: raw values can be negative.
        params: every parameter the method ran with (defaults filled in for the input size).
        target: the explained class index; ``probability``: the model's probability for it.
    """

    method: str
    saliency: np.ndarray | None
    seconds: float
    error: str | None = None
    raw: np.ndarray | None = None
    units: str = ""
    signed: bool = False
    params: dict = field(default_factory=dict)
    target: int | None = None
    probability: float | None = None

    @property
    def raw_range(self) -> tuple[float, float] | None:
        """(min, max) of the raw map, or None without one."""
        if self.raw is None or self.raw.size == 0:
            return None
        return float(self.raw.min()), float(self.raw.max())

    @property
    def note(self) -> str | None:
        """A warning when the raw map carries (almost) no signal, so its colours mean nothing."""
        if self.raw is None or self.raw.size == 0:
            return None
        low, high = self.raw_range
        peak = max(abs(low), abs(high))
        if peak < ZERO_SIGNAL:
            return f"No signal: the raw map is almost zero everywhere (largest |value| {peak:.2g})."
        if high - low <= ZERO_SIGNAL * peak:
            return f"No signal: the raw map is flat (every value {high:.3g})."
        return None


def weak_target_note(probability: float, class_name: str) -> str | None:
    """A warning when the explained class has a probability too low for its maps to show much."""
    if probability < WEAK_PROBABILITY:
        return (
            f"The model gives **{class_name}** only {probability:.2%}: maps explaining it carry little signal. "
            "Compare the raw ranges before reading them."
        )
    return None


# ----------------------------------------------------------------------------------------------
# Parameters


def effective_params(method: str, input_size: tuple[int, int], given: dict | None = None) -> dict:
    """Every parameter of ``method``: the defaults `describe` gives for this input size, then ``given``.

    Raises:
        ExplanationError: unknown method, or a parameter the method does not take.
    """
    from core.explain import ExplanationError, describe

    spec = describe(method, tuple(input_size))["params"]
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ExplanationError(
            f"{method}: expected parameters among {sorted(spec) or 'none'}. Received: {', '.join(unknown)}"
        )
    return {name: given.get(name, entry["default"]) for name, entry in spec.items()}


def validate_params(model, methods, params: dict | None = None) -> dict[str, dict]:
    """Checks each method's parameters against ``model`` without explaining anything.

    Returns each method's full parameters; raises `ExplanationError` (naming the method and the value)
    on the first method or parameter that cannot apply.
    """
    from core.explain import get_explainer
    from core.models import input_size

    height, width = input_size(model)
    checked = {}
    for method in methods:
        options = effective_params(method, (height, width), (params or {}).get(method))
        get_explainer(method).check_params(model, height, width, **options)
        checked[method] = options
    return checked


def adapt_params(model, method: str, params: dict | None) -> dict:
    """``params`` chosen for one model, made valid for ``model``: a layer it does not have becomes the
    default, and numbers are clamped into the bounds for its input size. Used to run the same methods
    on a second model."""
    from core.explain import conv_layer_names, describe
    from core.models import input_size

    spec = describe(method, input_size(model))["params"]
    adapted, layers = {}, None
    for name, value in (params or {}).items():
        entry = spec.get(name)
        if entry is not None and value is not None:
            if entry["kind"] == "layer":
                layers = conv_layer_names(model) if layers is None else layers
                if value not in layers:
                    value = entry["default"]
            elif entry["kind"] in ("int", "float") and not isinstance(value, bool):
                if entry["minimum"] is not None:
                    value = max(value, type(value)(entry["minimum"]))
                if entry["maximum"] is not None:
                    value = min(value, type(value)(entry["maximum"]))
        adapted[name] = value
    return adapted


# ----------------------------------------------------------------------------------------------
# Explaining


def _normalized(method: str, raw: np.ndarray) -> np.ndarray:
    """The method's own normalisation (the one ``explain(normalize=True)`` applies) of raw maps."""
    import tensorflow as tf

    from core.explain import get_explainer

    maps = np.asarray(get_explainer(method).normalize(tf.constant(raw, tf.float32)))
    return np.clip(np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0).astype(np.float32)


def _targets(probs: np.ndarray, class_index) -> np.ndarray:
    if class_index is None:
        return np.argmax(probs, axis=1).astype(int)
    if np.ndim(class_index) == 0:
        return np.full(len(probs), int(class_index))
    targets = np.asarray(class_index, dtype=int)
    if targets.shape != (len(probs),):
        raise ValueError(f"Expected one class index per image ({len(probs)}). Received: {class_index!r}")
    return targets


def explain_batch(
    model, images, methods, class_index=None, params: dict | None = None
) -> tuple[np.ndarray, list[list[MethodResult]]]:
    """Predicts a batch of images and explains it with each method, one compiled call per method.

    Args:
        model: a classifier taking pixels 0-255 (see `core.explain.explain`).
        images: (N, H, W, 3) pixel values 0-255 at the model's input size.
        methods: names from `core.explain.METHODS`, in the order to show them.
        class_index: None (each image's predicted class), an int, or N ints.
        params: ``{method: {param: value}}``; missing parameters take `describe`'s defaults for the size.

    Returns:
        The probabilities (N, C) and, per image, one `MethodResult` per method. A method that cannot
        apply gives results with ``error`` set instead of stopping the others.
    """
    from core.explain import ExplanationError, describe, explain
    from core.models import predict_proba

    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[-1] != 3 or len(batch) == 0:
        raise ValueError(f"Expected a batch of RGB images (N, H, W, 3) with N >= 1. Received shape {batch.shape}")
    probs = predict_proba(model, batch)
    targets = _targets(probs, class_index)
    per_image: list[list[MethodResult]] = [[] for _ in range(len(batch))]
    for method in methods:
        info = describe(method)
        started = time.perf_counter()
        raw = maps = None
        options: dict[str, Any] = dict((params or {}).get(method, {}))
        try:
            options = effective_params(method, batch.shape[1:3], options)
            raw = explain(model, batch, method, class_index=[int(t) for t in targets], normalize=False, **options)
            maps = _normalized(method, raw)
            error = None
        except ExplanationError as exc:
            error = str(exc)
        except Exception as exc:  # a failure of one method must not hide the others' maps
            error = f"{method} failed: {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        for i, results in enumerate(per_image):
            results.append(
                MethodResult(
                    method=method,
                    saliency=None if maps is None else maps[i],
                    seconds=seconds / len(batch),
                    error=error,
                    raw=None if raw is None else raw[i],
                    units=info["units"],
                    signed=bool(info["signed"]),
                    params=options,
                    target=int(targets[i]),
                    probability=float(probs[i, targets[i]]),
                )
            )
    return probs, per_image


def explain_side_by_side(
    model, image, methods, class_index=None, params: dict | None = None
) -> tuple[np.ndarray, list[MethodResult]]:
    """`explain_batch` for one image (H, W, 3) at the model's input size: (probabilities, results)."""
    probs, per_image = explain_batch(model, np.asarray(image)[None], methods, class_index, params)
    return probs[0], per_image[0]


@dataclass
class ModelExplanation:
    """One model's view of an image: the image at its input size, probabilities, one result per method."""

    image: np.ndarray
    probs: np.ndarray
    results: list[MethodResult]


def compare_models(models, image, methods, class_index=None, params: dict | None = None) -> list[ModelExplanation]:
    """The same image and methods on each model (e.g. before and after fine-tuning).

    Args:
        models: Keras classifiers; their input sizes may differ.
        image: uint8 RGB (H, W, 3) at any size: each model gets it resized to its own input.
        class_index: None (each model's predicted class), an int for every model, or one per model.
        params: ``{method: {param: value}}`` chosen for the first model; `adapt_params` makes them valid
            for each model (a missing layer falls back to the default, numbers are clamped).
    """
    from core.models import input_size

    per_model = class_index if isinstance(class_index, (list, tuple)) else [class_index] * len(models)
    if len(per_model) != len(models):
        raise ValueError(f"Expected one class index per model ({len(models)}). Received: {class_index!r}")
    image = np.asarray(image)
    comparison = []
    for model, index in zip(models, per_model):
        resized = resize_image(image, input_size(model))
        own = {method: adapt_params(model, method, (params or {}).get(method)) for method in methods}
        probs, results = explain_side_by_side(model, resized, methods, index, own)
        comparison.append(ModelExplanation(resized, probs, results))
    return comparison


# ----------------------------------------------------------------------------------------------
# Back to the original image


def display_image(original, max_side: int | None = None) -> np.ndarray:
    """The original image (H, W, 3), scaled down only when a side exceeds ``max_side``; aspect kept."""
    original = np.asarray(original)
    return resize_image(original, fit_within(original.shape[0], original.shape[1], max_side))


def map_to_original(saliency, original_shape, max_side: int | None = None) -> np.ndarray:
    """A map at the model's input size resized onto the original image's (height, width), or onto
    `display_image`'s size when ``max_side`` is given: the image keeps its aspect, the map is stretched."""
    height, width = original_shape[:2]
    return resize_map(saliency, fit_within(int(height), int(width), max_side))


# ----------------------------------------------------------------------------------------------
# Files: report, PNGs, maps


def library_versions() -> dict[str, str]:
    """Versions of what computed the maps (read from package metadata; imports nothing)."""
    versions = {"python": platform.python_version()}
    for package in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value):
    """JSON-friendly parameter values (numpy scalars become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def explanation_files(
    image,
    probs,
    results: list[MethodResult],
    class_names: list[str],
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    extra: dict | None = None,
) -> tuple[dict[str, bytes], dict]:
    """Everything written for one explained image, as ``{file name: bytes}``, and the JSON report.

    ``image`` is the picture the maps are shown on (the original, or `display_image`); every map is
    resized onto it. Files: ``input.png``; per method ``M_overlay.png``, ``M_heatmap.png``, ``M.npy`` (the
    normalised map) and ``M_raw.npy`` (the raw map), both at the image's size; ``raw_maps.npz`` with each
    raw map at the image's size (``M``) and at the model's input size (``M_model_input``, exact values);
    ``explanation.json`` (prediction, methods, parameters, raw ranges, units, timings, library versions).
    """
    image = np.asarray(image, dtype=np.uint8)
    shape = image.shape[:2]
    probs = np.asarray(probs, dtype=np.float64)
    predicted = int(np.argmax(probs))
    target = next((r.target for r in results if r.target is not None), predicted)
    files: dict[str, bytes] = {"input.png": png_bytes(image)}
    raw_maps: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {
        **(extra or {}),
        "predicted_class": class_names[predicted],
        "target_class": class_names[target],
        "probabilities": {name: float(p) for name, p in zip(class_names, probs)},
        "image_size": [int(shape[0]), int(shape[1])],
        "methods": {},
    }
    for result in results:
        entry: dict[str, Any] = {
            "seconds": round(result.seconds, 4),
            "parameters": {k: _plain(v) for k, v in result.params.items()},
            "units": result.units,
            "signed": result.signed,
        }
        if result.error:
            entry["error"] = result.error
        else:
            name = result.method
            saliency = resize_map(result.saliency, shape)
            raw = resize_map(result.raw, shape)
            files[f"{name}_overlay.png"] = png_bytes(overlay(image, saliency, alpha, colormap))
            files[f"{name}_heatmap.png"] = png_bytes(colorize(saliency, colormap))
            files[f"{name}.npy"] = _npy_bytes(saliency)
            files[f"{name}_raw.npy"] = _npy_bytes(raw)
            raw_maps[name] = raw
            raw_maps[f"{name}_model_input"] = result.raw
            low, high = result.raw_range
            entry.update(
                {
                    "map": f"{name}.npy",
                    "raw": f"{name}_raw.npy",
                    "overlay": f"{name}_overlay.png",
                    "heatmap": f"{name}_heatmap.png",
                    "raw_min": low,
                    "raw_max": high,
                    "model_input_size": list(result.raw.shape),
                }
            )
            if result.note:
                entry["note"] = result.note
        report["methods"][result.method] = entry
    report["versions"] = library_versions()
    if raw_maps:
        files["raw_maps.npz"] = npz(raw_maps)
    files["explanation.json"] = json.dumps(report, indent=2, default=str).encode()
    return files, report


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Named float32 maps as the bytes of a compressed ``.npz``."""
    from core.visualize import npz_bytes

    return npz_bytes({k: np.asarray(v, np.float32) for k, v in arrays.items()})


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """``{path inside the archive: bytes}`` as a zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
