"""The small pieces every part of `core.explain` shares: the error, the parameter description, the checks
of user input, and the in-graph helpers (class picking, map scaling, chunked loops).

Nothing here imports the rest of the package: `graph`, `base` and the methods import from here, so data
flows one way (common -> graph -> base -> methods -> registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
# Checks of what the caller gives
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


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def class_indices(method: str, class_index, n_images: int, n_classes: int) -> np.ndarray:
    """(N,) int32 class indices; -1 marks 'the image's predicted class' (``class_index=None``)."""
    if class_index is None:
        return np.full(n_images, -1, np.int32)
    if _is_int(class_index):
        values = [int(class_index)] * n_images
    elif isinstance(class_index, np.ndarray) and class_index.ndim == 0 and _is_int(class_index.item()):
        values = [int(class_index.item())] * n_images
    else:
        try:
            values = list(class_index)
        except TypeError:
            values = None
        if values is None or len(values) != n_images or not all(_is_int(v) for v in values):
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
    if not _is_int(value) or not (low <= value and (high is None or value <= high)):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ExplanationError(f"{method}: expected {name} an int {bound}{why}. Received: {name}={value!r}")
    return int(value)


def check_float(method: str, name: str, value, low: float, high: float | None = None, why: str = "") -> float:
    """A finite number within [low, high] (ints accepted); raises `ExplanationError` otherwise."""
    ok = (_is_int(value) or isinstance(value, (float, np.floating))) and np.isfinite(value)
    if not ok or not (low <= value and (high is None or value <= high)):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ExplanationError(f"{method}: expected {name} a number {bound}{why}. Received: {name}={value!r}")
    return float(value)


def check_bool(method: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ExplanationError(f"{method}: expected {name} a bool. Received: {name}={value!r}")
    return bool(value)


def check_choice(method: str, name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ExplanationError(f"{method}: expected {name} one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def auto_batch_size(height: int, width: int, pixels: int, cap: int) -> int:
    """Copies per pass that keep one pass to about ``pixels`` input pixels (memory bound), at most ``cap``."""
    return int(max(1, min(cap, pixels // max(1, height * width))))


# ----------------------------------------------------------------------------------------------
# In-graph helpers
# ----------------------------------------------------------------------------------------------


def resolve_classes(class_index: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Replaces the -1 entries of ``class_index`` by each image's predicted class (argmax)."""
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return tf.where(class_index < 0, predicted, class_index)


def predicted_classes(probabilities, images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """``classes`` with -1 replaced by the prediction; ``probabilities(images)`` runs only when one is -1."""
    return tf.cond(
        tf.reduce_any(classes < 0),
        lambda: resolve_classes(classes, probabilities(images)),
        lambda: classes,
    )


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


def scale_abs_max(maps: tf.Tensor) -> tf.Tensor:
    """The magnitude of a signed map, divided by its maximum (what matters, either way)."""
    return scale_by_max(tf.abs(maps))


def scale_positive(maps: tf.Tensor) -> tf.Tensor:
    """The positive part of a signed map (evidence for the class), divided by its maximum."""
    return scale_by_max(tf.nn.relu(maps))


def chunked_segment_sum(total, batch_size: int, body, n_segments, shape, dtype=tf.float32) -> tf.Tensor:
    """Sum over ``total`` work items, ``batch_size`` at a time, of ``body(items) -> (values, segment_ids)``.

    ``values`` has shape (B, *shape); the result (n_segments, *shape) adds each item's values into its
    segment (its image). One pass holds one batch, so memory is bounded whatever ``total`` is.
    """

    def step(start, sums):
        items = tf.range(start, tf.minimum(start + batch_size, total))
        values, segments = body(items)
        return start + batch_size, sums + tf.math.unsorted_segment_sum(values, segments, n_segments)

    zeros = tf.zeros(tf.concat([[n_segments], tf.constant(shape, tf.int32)], axis=0), dtype)
    _, sums = tf.while_loop(lambda start, _: start < total, step, (tf.constant(0), zeros), parallel_iterations=1)
    return sums
