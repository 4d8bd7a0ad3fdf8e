"""A look inside a model: one layer's feature maps, and class visualisation by gradient ascent.

Feature maps: `feature_maps(model, image, layer_name)` runs the model once with a tap on a layer with a
4-D output (a layer inside a nested backbone included, names from `conv_layer_names`) and returns its
activations (h, w, C), the channels ranked strongest first by their **mean activation** over all
positions, and per-channel statistics. `normalized_tiles` and `tile_grid` turn chosen channels into
min-max normalised tiles and one grid picture (pure numpy).

Class visualisation (the DeepDream family; Simonyan et al. 2014, Yosinski et al. 2015, Mordvintsev et
al. 2015): `visualize(model, settings)` starts from grey plus seeded noise (or a given image) and
climbs the gradient of a class score before softmax, or of one channel's mean activation in a layer,
with the usual regularisers: a random roll (jitter) each step, a small Gaussian blur every few steps,
an L2 decay towards grey, and pixel values clipped to 0-255. The gradient is divided by its mean
absolute value, so the learning rate is in pixel units per step. One compiled step per (model,
objective kind, layer, input size) is cached and reused for every step, class, channel and setting.

Compiled functions are cached per model with weak keys (a dropped model frees them) and hold the model
only through a weak reference (`core.explain.graph.ScoreModel`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from core.explain import ExplanationError
from core.explain.graph import ScoreModel, conv_layer_names, find_layer, layer_at, num_classes

RANKING_STATISTIC = "mean"
"""Channels are ranked by their mean activation over all positions of the layer's output."""

GREY = 128.0
"""The grey class visualisation starts from, and the centre its L2 decay pulls towards."""

BLUR_RADIUS = 4
"""Half-width of the Gaussian blur kernel (pixels); a fixed size so another sigma never retraces."""

TARGETS = ("class", "channel")


class InsideError(ValueError):
    """A look inside cannot be computed as asked; the message says what was expected and received."""


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def input_hw(model) -> tuple[int, int]:
    """(height, width) of the model's image input; raises `InsideError` unless it is (N, H, W, 3)."""
    inputs = getattr(model, "inputs", None)
    shape = tuple(inputs[0].shape) if inputs else ()
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 3:
        raise InsideError(f"Expected a model taking RGB images of a fixed size (N, H, W, 3). Received: {shape}")
    return int(shape[1]), int(shape[2])


def check_image(model, image) -> np.ndarray:
    """One pixel image (H, W, 3) or (1, H, W, 3), values 0-255, at the model's input size -> (1, H, W, 3) float32."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    height, width = input_hw(model)
    if array.ndim != 4 or array.shape[0] != 1 or array.shape[1:] != (height, width, 3):
        raise InsideError(
            f"Expected one RGB image of {height}x{width} pixels (the model's input size), shape ({height}, "
            f"{width}, 3). Received: shape {np.asarray(image).shape}"
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise InsideError(
            f"Expected pixel values in [0, 255]. Received range [{np.nanmin(array):.4g}, {np.nanmax(array):.4g}]"
        )
    return array


def layer_path(model, layer_name: str) -> tuple[str, ...]:
    """The `LayerPath` of a layer with a 4-D output (a name from `conv_layer_names`)."""
    names = conv_layer_names(model)
    if layer_name not in names:
        shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
        raise InsideError(
            f"Expected the name of a layer with a 4-D output (N, H, W, C), one of {shown or 'none (the model has none)'}. "
            f"Received: layer_name={layer_name!r}"
        )
    try:
        path = find_layer(model, layer_name)
    except ExplanationError as exc:
        raise InsideError(str(exc)) from exc
    if path is None:  # listed but not found: cannot happen for names from conv_layer_names
        raise InsideError(f"No layer named {layer_name!r} in the model")
    return path


def channel_count(model, layer_name: str) -> int:
    """Number of channels (the last axis) of a layer with a 4-D output."""
    layer = layer_at(model, layer_path(model, layer_name))
    return int(layer.output.shape[-1])


# ----------------------------------------------------------------------------------------------
# The compiled-function cache
# ----------------------------------------------------------------------------------------------

# model -> {key: tf.function}. Weak keys: a dropped model frees its functions.
_CACHE: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()  # also held while tracing, so two threads never trace the same function


def _cached(model, key: tuple, build: Callable[[], Any]):
    with _LOCK:
        functions = _CACHE.setdefault(model, {})
        if key not in functions:
            functions[key] = build()
        return functions[key]


def cached_functions(model) -> dict:
    """The compiled functions cached for ``model`` (a copy), keyed by what they were built for."""
    with _LOCK:
        return dict(_CACHE.get(model, {}))


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------------------------
# Feature maps
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureMaps:
    """One layer's output for one image.

    Attributes:
        layer_name: the layer (a name from `conv_layer_names`).
        activations: (h, w, C) float32, the layer's output.
        order: (C,) channel indices, strongest first by ``statistic`` (ties: lower index first).
        stats: per-channel (C,) float32 arrays: ``mean``, ``max``, ``min``, ``std`` and ``active`` (the
            fraction of positions above 0).
        probabilities: (num_classes,) the model's class probabilities for the image.
        statistic: what ``order`` ranks by: ``"mean"`` (mean activation over all positions).
    """

    layer_name: str
    activations: np.ndarray
    order: np.ndarray
    stats: dict[str, np.ndarray]
    probabilities: np.ndarray
    statistic: str = RANKING_STATISTIC


def feature_function(model, layer_name: str):
    """The cached ``tf.function`` images (N, H, W, 3) -> (activations (N, h, w, C), probabilities (N, K))."""
    path = layer_path(model, layer_name)
    height, width = input_hw(model)

    def build():
        score_model = ScoreModel(model, path)

        def run(images):
            forward = score_model(images)
            return forward.activations, forward.probabilities

        function = tf.function(
            run, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")], autograph=False
        )
        function.get_concrete_function()  # trace now, under the lock
        return function

    return _cached(model, ("features", path, height, width), build)


def channel_stats(activations) -> dict[str, np.ndarray]:
    """Per-channel statistics of activations (h, w, C): mean, max, min, std and the fraction above 0."""
    values = np.asarray(activations, dtype=np.float32)
    if values.ndim != 3:
        raise InsideError(f"Expected activations of shape (h, w, C). Received: shape {values.shape}")
    flat = values.reshape(-1, values.shape[-1])
    return {
        "mean": flat.mean(axis=0),
        "max": flat.max(axis=0),
        "min": flat.min(axis=0),
        "std": flat.std(axis=0),
        "active": (flat > 0).mean(axis=0).astype(np.float32),
    }


def rank_channels(activations) -> np.ndarray:
    """Channel indices of activations (h, w, C), highest mean activation first (ties: lower index first)."""
    means = channel_stats(activations)[RANKING_STATISTIC]
    return np.argsort(-means, kind="stable")


def feature_maps(model, image, layer_name: str) -> FeatureMaps:
    """The activations of ``layer_name`` for one pixel image, its channels ranked and summarised.

    Args:
        model: a Functional or Sequential `keras.Model` taking pixels 0-255 (N, H, W, 3).
        image: (H, W, 3) or (1, H, W, 3) pixel values 0-255 at the model's input size.
        layer_name: a layer with a 4-D output, a name from `conv_layer_names` (nested layers included).

    Returns:
        A `FeatureMaps`.

    Raises:
        InsideError: a wrong image shape or range, or a layer without a 4-D output.
    """
    batch = check_image(model, image)
    activations, probabilities = feature_function(model, layer_name)(tf.constant(batch))
    activations = np.nan_to_num(activations.numpy()[0].astype(np.float32))
    return FeatureMaps(
        layer_name=layer_name,
        activations=activations,
        order=rank_channels(activations),
        stats=channel_stats(activations),
        probabilities=probabilities.numpy()[0].astype(np.float32),
    )


def normalized_tiles(activations, channels) -> np.ndarray:
    """(K, h, w) float32: the chosen channels of activations (h, w, C), each min-max normalised to [0, 1]
    on its own (a flat channel becomes all zeros)."""
    values = np.asarray(activations, dtype=np.float32)
    if values.ndim != 3:
        raise InsideError(f"Expected activations of shape (h, w, C). Received: shape {values.shape}")
    channels = np.asarray(channels, dtype=np.int64).reshape(-1)
    if channels.size and (channels.min() < 0 or channels.max() >= values.shape[-1]):
        raise InsideError(
            f"Expected channel indices in [0, {values.shape[-1] - 1}]. Received: {channels.min()}..{channels.max()}"
        )
    tiles = np.moveaxis(values[..., channels], -1, 0)
    low = tiles.min(axis=(1, 2), keepdims=True) if channels.size else tiles
    span = tiles.max(axis=(1, 2), keepdims=True) - low if channels.size else tiles
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (tiles - low) / safe, 0.0).astype(np.float32)


def upscale(tile: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (each value becomes a factor x factor block)."""
    factor = max(1, int(factor))
    return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def tile_grid(
    tiles, columns: int | None = None, padding: int = 1, scale: int = 1, pad_value: float = 1.0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lays out tiles (K, h, w) in [0, 1] as one grid picture, left to right then top to bottom.

    Args:
        tiles: (K, h, w) values in [0, 1] (from `normalized_tiles`).
        columns: tiles per row; default ceil(sqrt(K)).
        padding: pixels between tiles and around the grid (after scaling).
        scale: integer nearest-neighbour enlargement of every tile.
        pad_value: the value of the padding pixels.

    Returns:
        ``(grid, positions)``: the grid (rows * (h * scale + padding) + padding, columns * (w * scale +
        padding) + padding) float32 in [0, 1], and each tile's (row, column).
    """
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim != 3 or len(tiles) == 0:
        raise InsideError(f"Expected at least one tile, shape (K, h, w). Received: shape {tiles.shape}")
    if not np.isfinite(tiles).all() or tiles.min() < 0 or tiles.max() > 1:
        raise InsideError("Expected tile values in [0, 1] (see normalized_tiles)")
    count, height, width = tiles.shape
    columns = max(1, min(count, int(columns) if columns else math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    scale, padding = max(1, int(scale)), max(0, int(padding))
    cell_h, cell_w = height * scale + padding, width * scale + padding
    grid = np.full((rows * cell_h + padding, columns * cell_w + padding), pad_value, np.float32)
    positions = []
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = padding + row * cell_h, padding + column * cell_w
        grid[top : top + height * scale, left : left + width * scale] = upscale(tile, scale)
        positions.append((row, column))
    return grid, positions


# ----------------------------------------------------------------------------------------------
# Class visualisation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisualizationSettings:
    """What to maximise and how. Pixel values are 0-255; the learning rate is in pixels per step.

    Attributes:
        target: ``"class"`` (a class score before softmax) or ``"channel"`` (one channel's mean activation).
        class_index: the class, for ``target="class"``.
        layer_name: the layer (a name from `conv_layer_names`), for ``target="channel"``.
        channel: the channel of ``layer_name``, for ``target="channel"``.
        steps: number of gradient-ascent steps.
        learning_rate: step size in pixel units (the gradient is divided by its mean absolute value).
        jitter: the image is rolled by a random shift of up to this many pixels each step (0: none).
        blur_every: blur every this many steps (0: never).
        blur_sigma: the Gaussian blur's standard deviation in pixels.
        decay: L2 decay: each step the image moves this fraction of the way back to grey.
        noise: standard deviation (pixel units) of the noise added to the grey start.
        seed: seeds the start noise and the jitter: the same seed gives the same image.
    """

    target: str = "class"
    class_index: int | None = 0
    layer_name: str | None = None
    channel: int | None = None
    steps: int = 100
    learning_rate: float = 4.0
    jitter: int = 2
    blur_every: int = 4
    blur_sigma: float = 0.5
    decay: float = 0.01
    noise: float = 8.0
    seed: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Visualization:
    """The result of `visualize`.

    Attributes:
        image: (H, W, 3) uint8, the image reached.
        scores: (steps_done,) float32, the objective at each step (on the jittered image, before the update).
        initial_score, final_score: the objective on the start image and on the result (no jitter).
        steps_done: the steps taken (fewer than ``settings["steps"]`` when stopped).
        stopped: True when the stop check ended it early.
        seconds: wall time.
        settings: the `VisualizationSettings` used, as a dict.
        objective: what was maximised, in words.
    """

    image: np.ndarray
    scores: np.ndarray
    initial_score: float
    final_score: float
    steps_done: int
    stopped: bool
    seconds: float
    settings: dict
    objective: str


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_settings(model, settings: VisualizationSettings) -> VisualizationSettings:
    """Validates ``settings`` against ``model``; raises `InsideError` naming the bad value."""
    if not isinstance(settings, VisualizationSettings):
        raise InsideError(f"Expected VisualizationSettings. Received: {type(settings).__name__}")
    height, width = input_hw(model)

    def need_int(name, low, high=None):
        value = getattr(settings, name)
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise InsideError(f"Expected {name} an int {bound}. Received: {name}={value!r}")

    def need_float(name, low, high):
        value = getattr(settings, name)
        if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
            raise InsideError(f"Expected {name} a number between {low} and {high}. Received: {name}={value!r}")

    if settings.target not in TARGETS:
        raise InsideError(f"Expected target one of {TARGETS}. Received: target={settings.target!r}")
    if settings.target == "class":
        classes = num_classes(model)
        need_int("class_index", 0, classes - 1)
    else:
        if not isinstance(settings.layer_name, str):
            raise InsideError(f"Expected a layer_name for target='channel'. Received: {settings.layer_name!r}")
        need_int("channel", 0, channel_count(model, settings.layer_name) - 1)
    need_int("steps", 1, 100_000)
    need_float("learning_rate", 0.0, 255.0)
    need_int("jitter", 0, max(0, min(height, width) // 2))
    need_int("blur_every", 0, 100_000)
    need_float("blur_sigma", 0.0, float(BLUR_RADIUS))
    need_float("decay", 0.0, 1.0)
    need_float("noise", 0.0, 128.0)
    need_int("seed", 0, 2**32 - 1)
    return settings


def gaussian_kernel(sigma: float) -> np.ndarray:
    """(2 * BLUR_RADIUS + 1,) float32 1-D Gaussian summing to 1; sigma 0 gives the identity kernel."""
    offsets = np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=np.float64)
    if sigma <= 0:
        return (offsets == 0).astype(np.float32)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(images: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur of (N, H, W, 3) with reflected borders."""
    size = 2 * BLUR_RADIUS + 1
    padded = tf.pad(images, [[0, 0], [BLUR_RADIUS, BLUR_RADIUS], [BLUR_RADIUS, BLUR_RADIUS], [0, 0]], mode="REFLECT")
    vertical = tf.tile(tf.reshape(kernel, [size, 1, 1, 1]), [1, 1, 3, 1])
    horizontal = tf.tile(tf.reshape(kernel, [1, size, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, vertical, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depthwise_conv2d(out, horizontal, strides=[1, 1, 1, 1], padding="VALID")


def _objective(score_model: ScoreModel, target: str):
    def objective(images, index):
        forward = score_model(images)
        if target == "class":
            return tf.gather(forward.scores, index, axis=1)
        return tf.reduce_mean(tf.gather(forward.activations, index, axis=-1), axis=(1, 2))

    return objective


def ascent_functions(model, target: str, layer_name: str | None = None):
    """The cached compiled ``(step, objective)`` for (model, target kind, layer, input size).

    ``step(image, shift, index, learning_rate, decay, blur, kernel) -> (new image, score)``;
    ``objective(image, index) -> (1,) score``. The class or channel, the settings and the blur kernel are
    inputs, so none of them retraces.
    """
    path = layer_path(model, layer_name) if target == "channel" else None
    height, width = input_hw(model)

    def build():
        objective = _objective(ScoreModel(model, path), target)
        image_spec = tf.TensorSpec([1, height, width, 3], tf.float32, name="image")

        def step(image, shift, index, learning_rate, decay, blur, kernel):
            jittered = tf.roll(image, shift, axis=[1, 2])
            with tf.GradientTape() as tape:
                tape.watch(jittered)
                score = objective(jittered, index)
            gradient = tf.roll(tape.gradient(score, jittered), -shift, axis=[1, 2])
            gradient = gradient / (tf.reduce_mean(tf.abs(gradient)) + 1e-8)
            image = image + learning_rate * gradient
            image = GREY + (1.0 - decay) * (image - GREY)
            image = tf.cond(blur, lambda: _blur(image, kernel), lambda: image)
            return tf.clip_by_value(image, 0.0, 255.0), score[0]

        step_function = tf.function(
            step,
            input_signature=[
                image_spec,
                tf.TensorSpec([2], tf.int32, name="shift"),
                tf.TensorSpec([], tf.int32, name="index"),
                tf.TensorSpec([], tf.float32, name="learning_rate"),
                tf.TensorSpec([], tf.float32, name="decay"),
                tf.TensorSpec([], tf.bool, name="blur"),
                tf.TensorSpec([2 * BLUR_RADIUS + 1], tf.float32, name="kernel"),
            ],
            autograph=False,
        )
        objective_function = tf.function(
            objective, input_signature=[image_spec, tf.TensorSpec([], tf.int32, name="index")], autograph=False
        )
        step_function.get_concrete_function()
        objective_function.get_concrete_function()
        return step_function, objective_function

    return _cached(model, ("ascent", target, path, height, width), build)


def start_image(model, settings: VisualizationSettings) -> np.ndarray:
    """(1, H, W, 3) float32: grey plus seeded Gaussian noise, clipped to 0-255."""
    height, width = input_hw(model)
    rng = np.random.default_rng(settings.seed)
    noise = (
        rng.normal(0.0, settings.noise, (1, height, width, 3)) if settings.noise else np.zeros((1, height, width, 3))
    )
    return np.clip(GREY + noise, 0, 255).astype(np.float32)


def describe_objective(settings: VisualizationSettings, class_names=None) -> str:
    if settings.target == "class":
        name = class_names[settings.class_index] if class_names else f"class {settings.class_index}"
        return f"score of {name} (before softmax)"
    return f"mean activation of channel {settings.channel} of {settings.layer_name}"


def visualize(
    model,
    settings: VisualizationSettings,
    progress: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    image=None,
    class_names=None,
) -> Visualization:
    """Gradient ascent on the input image to maximise a class score or a channel (see the module doc).

    Args:
        model: a Functional or Sequential `keras.Model` taking pixels 0-255 (N, H, W, 3).
        settings: a `VisualizationSettings`.
        progress: called after every step with (steps done, the step's score).
        should_stop: called before every step; returning True ends the ascent there (the image reached so
            far is returned, ``stopped=True``).
        image: start from this pixel image (H, W, 3) instead of grey plus noise (DeepDream on a picture).
        class_names: only used to describe the objective.

    Returns:
        A `Visualization`. The same model, settings and start give the same image.

    Raises:
        InsideError: settings that do not fit the model.
    """
    started = time.perf_counter()
    settings = check_settings(model, settings)
    index = settings.class_index if settings.target == "class" else settings.channel
    step, objective = ascent_functions(model, settings.target, settings.layer_name)
    current = tf.constant(start_image(model, settings) if image is None else check_image(model, image))
    rng = np.random.default_rng([settings.seed, 1])  # its own stream: the start noise does not shift it
    index_t = tf.constant(int(index), tf.int32)
    learning_rate = tf.constant(float(settings.learning_rate), tf.float32)
    decay = tf.constant(float(settings.decay), tf.float32)
    kernel = tf.constant(gaussian_kernel(float(settings.blur_sigma)))
    initial_score = float(objective(current, index_t).numpy()[0])
    scores: list[float] = []
    stopped = False
    for number in range(1, settings.steps + 1):
        if should_stop is not None and should_stop():
            stopped = True
            break
        shift = rng.integers(-settings.jitter, settings.jitter + 1, size=2) if settings.jitter else np.zeros(2)
        blur = settings.blur_every > 0 and settings.blur_sigma > 0 and number % settings.blur_every == 0
        current, score = step(
            current, tf.constant(shift, tf.int32), index_t, learning_rate, decay, tf.constant(blur), kernel
        )
        scores.append(float(score.numpy()))
        if progress is not None:
            progress(number, scores[-1])
    final_score = float(objective(current, index_t).numpy()[0])
    return Visualization(
        image=np.clip(np.round(current.numpy()[0]), 0, 255).astype(np.uint8),
        scores=np.asarray(scores, np.float32),
        initial_score=initial_score,
        final_score=final_score,
        steps_done=len(scores),
        stopped=stopped,
        seconds=time.perf_counter() - started,
        settings=settings.as_dict(),
        objective=describe_objective(settings, class_names),
    )
