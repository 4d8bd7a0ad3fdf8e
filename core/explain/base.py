"""The explanation contract, the `Explainer` base class that owns its pipeline, and the compiled cache.

Every method takes a batch of pixel images (N, H, W, 3), values 0-255, and returns float32 maps
(N, H, W) in [0, 1] at input resolution. The base class does everything but the method's own math:

1. checks the images and the class indices (`check_images`, `class_indices`);
2. checks and normalises the method's parameters (`Explainer.check_params`, overridden per method);
3. fetches, or builds once, a ``tf.function`` for (model, method, options, image size): input
   signature ``[None, H, W, 3]`` float32 images plus ``[None]`` int32 class indices (-1: the predicted
   class), so another image, class or batch size never retraces;
4. runs it: the method's `Explainer.attribute` (raw maps, inside the graph), then `Explainer.normalize`
   (inside the graph), then a last ``nan_to_num``/``clip`` on the numpy result.

A method is a subclass overriding `attribute` (and `check_params`/`normalize` where it needs to),
registered in ``core/explain/__init__.py``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf


class ExplanationError(ValueError):
    """An explanation cannot be computed as asked; the message says what was expected and received."""


PARAM_KINDS = ("int", "float", "bool", "choice", "layer")


@dataclass(frozen=True)
class Param:
    """One user-facing parameter of a method, described well enough to build a widget or a CLI option.

    Attributes:
        default: the value used when the caller gives none (may be None when ``nullable``).
        help: one line for the UI and ``--help``.
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``choices``) or ``"layer"`` (a
            layer name of the model, see `conv_layer_names`).
        minimum, maximum: inclusive bounds for ``int``/``float`` (None: unbounded). Bounds that depend
            on the image size come from `Explainer.bounds`, not from here.
        choices: the allowed values for ``"choice"``.
        nullable: None is an accepted value (with a meaning given in ``help``).
    """

    default: Any
    help: str
    minimum: float | None = None
    kind: str = "int"
    maximum: float | None = None
    choices: tuple = ()
    nullable: bool = False

    def __post_init__(self):
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"Param kind must be one of {PARAM_KINDS}. Received: kind={self.kind!r}")


# ----------------------------------------------------------------------------------------------
# Checks shared by every method
# ----------------------------------------------------------------------------------------------


def check_images(method: str, images, model_hw: tuple) -> np.ndarray:
    """Returns ``images`` as a contiguous float32 (N, H, W, 3) array, or raises `ExplanationError`."""
    try:
        array = np.asarray(images)
    except Exception as exc:  # ragged lists and the like
        raise ExplanationError(
            f"{method}: expected images as an array (N, H, W, 3). Received: {type(images).__name__} ({exc})"
        ) from exc
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ExplanationError(
            f"{method}: expected images of a numeric dtype (uint8 or float, pixel values 0-255). "
            f"Received: dtype={array.dtype}"
        )
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        hint = " (a single image? pass images[None])" if array.ndim == 3 else ""
        raise ExplanationError(
            f"{method}: expected a batch of RGB images of shape (N, H, W, 3) with N >= 1. "
            f"Received: shape {array.shape}{hint}"
        )
    height, width = model_hw
    if (height is not None and array.shape[1] != height) or (width is not None and array.shape[2] != width):
        raise ExplanationError(
            f"{method}: expected images of height {height} and width {width}, the model's input size. "
            f"Received: shape {array.shape}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ExplanationError(f"{method}: expected finite pixel values. Received: NaN or infinite values")
    return array


def class_indices(method: str, class_index, n_images: int, n_classes: int) -> np.ndarray:
    """(N,) int32 class indices; -1 marks 'the image's predicted class' (``class_index=None``)."""
    if class_index is None:
        return np.full(n_images, -1, np.int32)

    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

    if is_int(class_index):
        values = [int(class_index)] * n_images
    elif isinstance(class_index, np.ndarray) and class_index.ndim == 0 and is_int(class_index.item()):
        values = [int(class_index.item())] * n_images
    else:
        try:
            values = list(class_index)
        except TypeError:
            values = None
        if values is None or len(values) != n_images or not all(is_int(v) for v in values):
            raise ExplanationError(
                f"{method}: expected class_index as None, an int, or a sequence of {n_images} ints "
                f"(one per image). Received: class_index={class_index!r}"
            )
        values = [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < n_classes]
    if bad:
        raise ExplanationError(
            f"{method}: expected class_index in [0, {n_classes - 1}] (the model has {n_classes} classes). "
            f"Received: class_index={class_index!r}"
        )
    return np.asarray(values, np.int32)


def check_int(method: str, name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    """An int parameter within [low, high]; raises `ExplanationError` naming it otherwise."""
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, (bool, np.bool_))
        or not (low <= value and (high is None or value <= high))
    ):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ExplanationError(f"{method}: expected {name} an int {bound}{why}. Received: {name}={value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# In-graph helpers shared by the methods
# ----------------------------------------------------------------------------------------------


def resolve_classes(class_index: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Replaces the -1 entries of ``class_index`` by each image's predicted class (argmax)."""
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return tf.where(class_index < 0, predicted, class_index)


def pick(values: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """``values[i, classes[i]]`` for each row i."""
    return tf.gather(values, classes, axis=1, batch_dims=1)


def scale_by_max(maps: tf.Tensor) -> tf.Tensor:
    """Divides each map by its maximum; a map whose maximum is not positive becomes all zeros."""
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.where(peak > 0, maps / tf.where(peak > 0, peak, 1.0), 0.0)


def scale_min_max(maps: tf.Tensor) -> tf.Tensor:
    """Maps each map's range onto [0, 1]; a flat map becomes all zeros."""
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    span = tf.reduce_max(maps, axis=(1, 2), keepdims=True) - low
    return tf.where(span > 0, (maps - low) / tf.where(span > 0, span, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# The base class and the compiled-function cache
# ----------------------------------------------------------------------------------------------

# model -> {(method, options, height, width): _Entry holding a tf.function}. Weak keys: a dropped model frees its entry
# (compiled functions hold the model only through a weak reference, see `graph.ScoreModel`).
_CACHE: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.RLock()
# model -> {("raw", method, user params, height, width): tf.function}: skips re-checking parameters.
_RESOLVED: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


class _Entry:
    """One cache slot: the compiled function, and the lock its (single) tracing holds."""

    def __init__(self):
        self.lock = threading.Lock()
        self.function = None


def cached_functions(model) -> dict:
    """The compiled functions cached for ``model`` (a copy), keyed by (method, options, height, width)."""
    with _CACHE_LOCK:
        entries = dict(_CACHE.get(model, {}))
    return {key: entry.function for key, entry in entries.items() if entry.function is not None}


def clear_cache() -> None:
    """Drops every compiled explanation function."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _RESOLVED.clear()


class Explainer:
    """Base class of every explanation method: owns the pipeline, the checks and the cache.

    Subclasses set `name`, `title` and `params`, and override `attribute` (the method's math, run
    inside a ``tf.function``), plus `check_params` and `normalize` where they need to.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # "Authors Year, URL": shown in the README and the UI
    units: ClassVar[str] = ""  # what one value of the raw map (normalize=False) measures
    signed: ClassVar[bool] = False  # raw maps can be negative
    randomized: ClassVar[bool] = False  # takes a seed; the same seed gives the same map
    params: ClassVar[Mapping[str, Param]] = {}

    def bounds(self, height: int, width: int) -> dict[str, dict]:
        """Per-parameter overrides of ``minimum``/``maximum``/``default`` for an image of this size
        (e.g. occlusion's patch size at most the image side). The base has none."""
        return {}

    def check_params(self, model, height: int, width: int, **params) -> dict:
        """Validates the user's parameters; returns the full, hashable options (defaults filled in).

        The base version rejects unknown names and fills defaults; subclasses call it, then check values.
        """
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ExplanationError(
                f"{self.name}: expected parameters among {sorted(self.params) or 'none'}. "
                f"Received: {', '.join(f'{k}={params[k]!r}' for k in unknown)}"
            )
        return {key: params.get(key, spec.default) for key, spec in self.params.items()}

    def attribute(self, model, images: tf.Tensor, class_index: tf.Tensor, options: dict) -> tf.Tensor:
        """Raw maps (N, H, W) for float32 ``images`` (N, H, W, 3) and int32 ``class_index`` (N,), -1 =
        predicted class. Runs inside a ``tf.function``; ``model`` is usable only while tracing."""
        raise NotImplementedError

    def normalize(self, maps: tf.Tensor) -> tf.Tensor:
        """Raw maps -> [0, 1]; the default divides by each map's maximum."""
        return scale_by_max(maps)

    # -- pipeline ---------------------------------------------------------------------------------

    def compiled(self, model, options: dict, height: int, width: int):
        """The cached ``tf.function`` for (model, method, options, size); built and traced once.

        The global lock only guards the dictionaries; tracing holds the entry's own lock, so a thread
        compiling one model's function never blocks threads explaining with functions already built.
        """
        key = (self.name, tuple(sorted(options.items())), height, width)
        with _CACHE_LOCK:
            entry = _CACHE.setdefault(model, {}).setdefault(key, _Entry())
        with entry.lock:
            if entry.function is None:
                entry.function = self._compile(model, options, height, width)
        return entry.function

    def _function_for(self, model, params: dict, height: int, width: int, normalize: bool = True):
        """`compiled` for the user's raw params, remembering their resolution (layer look-ups and all)."""
        try:
            raw_key = ("raw", self.name, tuple(sorted(params.items())), height, width, normalize)
            hash(raw_key)
        except TypeError:  # unhashable values: check them every time (check_params will reject them)
            raw_key = None
        if raw_key is not None:
            with _CACHE_LOCK:
                function = _RESOLVED.get(model, {}).get(raw_key)
            if function is not None:
                return function
        options = {**self.check_params(model, height, width, **params), "_normalize": bool(normalize)}
        function = self.compiled(model, options, height, width)
        if raw_key is not None:
            with _CACHE_LOCK:
                _RESOLVED.setdefault(model, {})[raw_key] = function
        return function

    def _compile(self, model, options: dict, height: int, width: int):
        model_ref = weakref.ref(model)
        attribute, normalize = self.attribute, self.normalize

        method_options = {k: v for k, v in options.items() if k != "_normalize"}
        scale = options.get("_normalize", True)

        def explain_batch(images, class_index):
            maps = tf.cast(attribute(model_ref(), images, class_index, method_options), tf.float32)
            return normalize(maps) if scale else maps

        function = tf.function(
            explain_batch,
            input_signature=[
                tf.TensorSpec([None, height, width, 3], tf.float32, name="images"),
                tf.TensorSpec([None], tf.int32, name="class_index"),
            ],
            autograph=False,
            jit_compile=False,  # XLA is several times slower on CPU for these graphs
        )
        function.get_concrete_function()  # trace now, under the entry's lock, not in a racing caller
        return function

    def explain(self, model, images, class_index=None, normalize: bool = True, **params) -> np.ndarray:
        """Explains ``images`` for ``model``; see `core.explain.explain` for the contract."""
        if not isinstance(normalize, bool):
            raise ExplanationError(f"{self.name}: expected normalize a bool. Received: normalize={normalize!r}")
        try:
            return self._explain(model, images, class_index, params, normalize)
        except ExplanationError as exc:  # every message names the method
            if str(exc).startswith(f"{self.name}:"):
                raise
            raise ExplanationError(f"{self.name}: {exc}") from exc

    def _explain(self, model, images, class_index, params: dict, normalize: bool = True) -> np.ndarray:
        from . import graph

        n_classes = graph.num_classes(model)
        shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else (None, None, None, 3)
        array = check_images(self.name, images, shape[1:3])
        height, width = array.shape[1:3]
        classes = class_indices(self.name, class_index, len(array), n_classes)
        function = self._function_for(model, params, height, width, normalize)
        maps = np.nan_to_num(
            function(tf.constant(array), tf.constant(classes)).numpy(), nan=0.0, posinf=0.0, neginf=0.0
        )
        return (np.clip(maps, 0.0, 1.0) if normalize else maps).astype(np.float32)
