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

A method is a subclass overriding `attribute` (and `check_params`/`normalize` where it needs to), in its
own file, registered by one line in ``core/explain/__init__.py``. Families share a base: `cam.CAMExplainer`
(the CAM methods differ only in their channel weights) and `gradients.GradientExplainer` (the score and
input-gradient step; SmoothGrad wraps the others). A method that must run in Python (LIME, through the
``lime`` package) sets ``in_graph = False`` and writes `Explainer.attribute_eager` around the model's
compiled predict instead. Each method also states its bare work (`Explainer.cost` / `Explainer.floor`),
which the benchmark compiles and times beside it.

Imports flow one way: ``common`` (error, Param, checks, in-graph helpers) -> ``graph`` -> ``base`` ->
the method files -> the registry.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow as tf

from . import graph
from .common import (  # noqa: F401 (re-exported: methods and older callers import them from here)
    PARAM_KINDS,
    ExplanationError,
    Param,
    check_bool,
    check_choice,
    check_float,
    check_images,
    check_int,
    class_indices,
    pick,
    resolve_classes,
    scale_abs_max,
    scale_by_max,
    scale_min_max,
    scale_positive,
)


class Cost(NamedTuple):
    """The bare work one explanation does per image, for the benchmark's floor (see `Explainer.floor`).

    ``kind``: "forward" (class scores of ``copies`` images) or "gradient" (the gradient of the class
    score with respect to ``copies`` input images); ``batch_size``: copies per pass (None: all at once).
    """

    kind: str
    copies: int
    batch_size: int | None = None


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
    fast_params: ClassVar[Mapping[str, Any]] = {}  # a cheap, rough setting (previews, tests)
    in_graph: ClassVar[bool] = True  # False: `attribute_eager` runs in Python around a compiled predict

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

    def attribute_eager(self, predict, images: np.ndarray, classes: np.ndarray, options: dict) -> np.ndarray:
        """For methods with ``in_graph = False`` (a library that runs in Python, such as LIME): raw maps
        (N, H, W) for float32 ``images``, with ``classes`` resolved (no -1). ``predict`` is the model's
        compiled, batched ``images -> probabilities`` (N, C) numpy function."""
        raise NotImplementedError

    def normalize(self, maps: tf.Tensor) -> tf.Tensor:
        """Raw maps -> [0, 1]; the default divides by each map's maximum."""
        return scale_by_max(maps)

    def cost(self, options: dict, height: int, width: int) -> Cost:
        """The bare work behind one image's explanation with these options (the benchmark's floor).
        The base: one gradient of the class score with respect to the image."""
        return Cost("gradient", 1)

    def floor(self, model, options: dict, height: int, width: int):
        """The same work as a bare function ``(images, class_index) -> scalar`` on ``model`` (no graph walk,
        no checks, no map), for the benchmark to compile and time beside this method. Built from `cost`;
        a method whose work is something else overrides this."""
        return bare_floor(model, self.cost(options, height, width))

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
        if not self.in_graph:
            return _EagerFunction(self, model, options, height, width)
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


class _EagerFunction:
    """The cached 'function' of a method that runs in Python (``in_graph = False``): a compiled predict
    (traced once per model and size, like every other method's function) plus the method's own code."""

    def __init__(self, explainer: Explainer, model, options: dict, height: int, width: int):
        score_model = graph.ScoreModel(model)
        self._explainer = explainer
        self._options = {k: v for k, v in options.items() if k != "_normalize"}
        self._scale = options.get("_normalize", True)
        self._predict = tf.function(
            lambda images: score_model(images).probabilities,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")],
            autograph=False,
        )
        self._predict.get_concrete_function()

    def predict(self, images) -> np.ndarray:
        """Class probabilities (N, C) of a numpy batch, as float64 (what scikit-learn's regressors want)."""
        return self._predict(tf.constant(np.asarray(images, np.float32))).numpy().astype(np.float64)

    def experimental_get_tracing_count(self) -> int:
        return self._predict.experimental_get_tracing_count()

    def __call__(self, images, class_index):
        array = np.asarray(images, np.float32)
        classes = np.asarray(class_index, np.int32)
        if (classes < 0).any():
            classes = np.where(classes < 0, self.predict(array).argmax(axis=1), classes).astype(np.int32)
        maps = tf.constant(np.asarray(self._explainer.attribute_eager(self.predict, array, classes, self._options)))
        maps = tf.cast(maps, tf.float32)
        return self._explainer.normalize(maps) if self._scale else maps


def bare_floor(model, cost: Cost):
    """``(images, class_index) -> scalar``: ``cost.copies`` copies of each image through ``model`` itself
    (its output, softmax included), forward only or with the input gradient, ``cost.batch_size`` at a time."""
    copies, batch_size, gradient = int(cost.copies), cost.batch_size, cost.kind == "gradient"

    def floor(images, class_index):
        n_images = tf.shape(images)[0]
        total = n_images * copies
        step = total if batch_size is None else batch_size

        def body(start, acc):
            image = tf.range(start, tf.minimum(start + step, total)) // copies
            x, c = tf.gather(images, image), tf.gather(class_index, image)
            if gradient:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    score = pick(model(x, training=False), c)
                value = tf.reduce_sum(tape.gradient(score, x))
            else:
                value = tf.reduce_sum(pick(model(x, training=False), c))
            return start + step, acc + value

        _, acc = tf.while_loop(lambda start, _: start < total, body, (tf.constant(0), tf.constant(0.0)))
        return acc

    return floor
