"""Runs a Keras model's graph with a tap on one layer and the final softmax/sigmoid taken off.

Explanations need two things a plain ``model(x)`` does not give: the output of an inner layer (Grad-CAM's
target layer, possibly inside a nested backbone such as the ``efficientnetb0`` sub-model of a
transfer-learning classifier) and the class score *before* softmax. Building a second ``keras.Model``
for that (tf-explain's way) fails on Sequential models and on layers inside a nested sub-model, and
costs a rebuild per call. Instead `ScoreModel` walks the existing graph with Keras 3's own
``Functional._run_through_graph`` (what ``Functional.call`` does), substituting two operations:

* the target layer's call is wrapped to record its output (and a nested sub-model on the way to it is
  walked recursively the same way);
* the model's last layer is replaced by its pre-activation: an ``Activation``/``Softmax`` layer by its
  input, a layer with ``activation="softmax"``/``"sigmoid"`` (``Dense(activation="softmax")``, say) by
  the same layer's computation with a linear activation, sharing its weights.

Every layer is called in inference mode (``training=False``). Sequential models are walked layer by
layer. Nothing here is compiled or cached; `core.explain.base` does that.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import NamedTuple

import keras
import tensorflow as tf

from .common import ExplanationError

LayerPath = tuple[str, ...]
"""Names from the outer model down to a layer: ``("efficientnetb0", "top_activation")``."""


class Forward(NamedTuple):
    """What one pass of `ScoreModel` returns."""

    activations: tf.Tensor | None  # the tapped layer's output, None when no layer was asked for
    scores: tf.Tensor  # (N, C) class scores before softmax (binary sigmoid: [-logit, logit])
    probabilities: tf.Tensor  # (N, C) class probabilities (binary sigmoid: [1 - p, p])


# ----------------------------------------------------------------------------------------------
# Model structure
# ----------------------------------------------------------------------------------------------


def _is_functional(model) -> bool:
    return hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth")


def is_graph_model(layer) -> bool:
    """A model this module can walk: Functional or Sequential."""
    return isinstance(layer, keras.Sequential) or (isinstance(layer, keras.Model) and _is_functional(layer))


def _has_4d_output(layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError, IndexError, RuntimeError):
        return False
    return len(shape) == 4


def walk_layers(model, prefix: LayerPath = ()) -> Iterator[tuple[LayerPath, keras.layers.Layer]]:
    """Every layer in network order, nested graph models expanded after their own entry."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = prefix + (layer.name,)
        yield path, layer
        if is_graph_model(layer):
            yield from walk_layers(layer, path)


def conv_layer_paths(model) -> list[LayerPath]:
    """Paths of every layer with a 4-D output (nested backbones expanded; the backbone itself left out).

    Layers that only adapt pixels for the network (those with ``is_input_adapter = True``, such as the
    preprocessing put in front of every model) are not part of what the model learned: left out."""
    if not is_graph_model(model):
        return []
    return [
        path
        for path, layer in walk_layers(model)
        if not is_graph_model(layer) and _has_4d_output(layer) and not getattr(layer, "is_input_adapter", False)
    ]


def conv_layer_names(model) -> list[str]:
    """Names of every layer with a 4-D output (N, H, W, C), in network order.

    Layers inside a nested sub-model (the backbone of a transfer-learning model) are listed by their
    plain inner name, in place of the sub-model; a name used twice (in two sub-models) is listed as its
    ``"outer/inner"`` path. Every name is a valid ``layer_name`` for Grad-CAM.

    Args:
        model: a Functional or Sequential `keras.Model`.

    Returns:
        A list of layer names; empty when the model has no such layer.

    Example:
        >>> conv_layer_names(build_model("compact_cnn", 3, 64))[-1]
        'top_conv'
    """
    paths = conv_layer_paths(model)
    plain = [path[-1] for path in paths]
    all_names = [path[-1] for path, _ in walk_layers(model)] if paths else []
    return [name if all_names.count(name) == 1 else "/".join(path) for name, path in zip(plain, paths)]


def default_layer_name(model) -> str | None:
    """Grad-CAM's default target layer: the last layer with a 4-D output, or None when there is none."""
    names = conv_layer_names(model)
    return names[-1] if names else None


def find_layer(model, layer_name: str) -> LayerPath | None:
    """Resolves ``layer_name`` (a plain name, or an ``"outer/inner"`` path) to a unique `LayerPath`.

    Returns None when no layer has that name. Raises `ExplanationError` when a plain name is ambiguous
    (the same name in two nested sub-models).
    """
    if not is_graph_model(model) or not isinstance(layer_name, str) or not layer_name:
        return None
    paths = [path for path, _ in walk_layers(model)]
    if "/" in layer_name:
        wanted = tuple(layer_name.split("/"))
        return wanted if wanted in paths else None
    matches = [path for path in paths if path[-1] == layer_name]
    if len(matches) > 1:
        options = ", ".join(repr("/".join(p)) for p in matches)
        raise ExplanationError(
            f"Layer name is ambiguous. Expected one of the paths {options}. Received: layer_name={layer_name!r}"
        )
    return matches[0] if matches else None


def layer_at(model, path: LayerPath):
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    return layer


def output_shape(model) -> tuple:
    """The model's single output shape, (N, C) for a classifier."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        raise ExplanationError(
            "Expected a built Keras model with known outputs (build it on an Input). "
            f"Received: a {type(model).__name__} without outputs"
        )
    if len(outputs) != 1:
        raise ExplanationError(f"Expected a model with a single output. Received: {len(outputs)} outputs")
    return tuple(outputs[0].shape)


def num_classes(model) -> int:
    """Number of classes the explanation can target: a single sigmoid unit counts as two."""
    shape = output_shape(model)
    if len(shape) != 2 or shape[-1] is None:
        raise ExplanationError(
            f"Expected a classifier with output shape (N, num_classes). Received: output shape {shape}"
        )
    return max(int(shape[-1]), 2)


# ----------------------------------------------------------------------------------------------
# Running the graph
# ----------------------------------------------------------------------------------------------


def _activation_name(layer) -> str | None:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if not hasattr(layer, "activation"):
        return None
    activation = layer.activation
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", type(activation).__name__)


def _inference(op):
    """Calls ``op`` in inference mode, as ``Functional.call(..., training=False)`` does."""
    if "training" not in getattr(op, "_call_context_args", ()):
        return op

    def call(*args, **kwargs):
        kwargs["training"] = False
        return op(*args, **kwargs)

    return call


class _WithoutActivation:
    """``layer``'s own ``call`` with a linear activation: same variables, no copy, no mutation."""

    def __init__(self, layer):
        self._layer = layer
        self.activation = None

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def __call__(self, inputs, *args, **kwargs):
        kwargs.pop("training", None)
        return type(self._layer).call(self, inputs, *args, **kwargs)


def _identity(inputs, *args, **kwargs):
    return inputs


def _head_layer(model):
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    return model.outputs[0]._keras_history[0]


def _strip_activation(layer, head: dict):
    """Replacement for the last layer that returns its pre-activation; records what it took off."""
    name = _activation_name(layer)
    if name in ("softmax", "sigmoid"):
        head["activation"] = name
        if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
            return _identity
        return _WithoutActivation(layer)
    head["activation"] = "linear" if name == "linear" else "unknown"
    return _inference(layer)


def run_graph(model, inputs, tap: LayerPath | None, taps: list, head: dict | None):
    """Runs ``model`` on ``inputs``; appends the output of layer ``tap`` to ``taps``; strips the head.

    ``head`` (when not None) asks for the model's last activation to be taken off, and receives
    ``head["activation"]``: "softmax", "sigmoid", "linear" or "unknown".
    """
    head_layer = _head_layer(model) if head is not None else None

    def operation_fn(op):
        name = getattr(op, "name", None)
        on_path = bool(tap) and name == tap[0]
        inner = tap[1:] if on_path else None
        is_head = op is head_layer
        if is_graph_model(op) and (inner or is_head):

            def fn(x, *args, **kwargs):
                return run_graph(op, x, inner or None, taps, head if is_head else None)

        elif is_head:
            fn = _strip_activation(op, head)
        else:
            fn = _inference(op)
        if on_path and not inner:  # the tapped layer itself

            def tapped(*args, _fn=fn, **kwargs):
                out = _fn(*args, **kwargs)
                if not taps:  # a layer shared at several places: its first call, like `layer.output`
                    taps.append(out)
                return out

            return tapped
        return fn

    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = operation_fn(layer)(x)
        return x
    if _is_functional(model):
        flat = model._standardize_inputs(inputs)
        outputs = model._run_through_graph(flat, operation_fn=operation_fn)
        return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs
    if tap:
        raise ExplanationError(
            "Expected a Functional or Sequential model to read an inner layer from. "
            f"Received: a subclassed {type(model).__name__}"
        )
    if head is not None:
        head["activation"] = "unknown"
    return model(inputs, training=False)


class ScoreModel:
    """Class scores and probabilities of ``model``, plus the output of one layer.

    Holds the model weakly so a cache of compiled functions built on it never keeps it alive.

    Args:
        model: a Functional or Sequential `keras.Model` with one (N, C) output.
        layer_path: a `LayerPath` whose output to return (see `find_layer`), or None.
    """

    def __init__(self, model, layer_path: LayerPath | None = None):
        self._model = weakref.ref(model)
        self.layer_path = tuple(layer_path) if layer_path else None

    def __call__(self, images) -> Forward:
        model = self._model()
        if model is None:
            raise ExplanationError("The model this explanation was compiled for no longer exists.")
        taps: list = []
        head: dict = {}
        z = run_graph(model, images, self.layer_path, taps, head)
        z = tf.cast(z, tf.float32)
        kind = head.get("activation", "unknown")
        binary = z.shape[-1] == 1
        if binary and kind in ("sigmoid", "linear"):
            scores = tf.concat([-z, z], axis=-1)
            probabilities = tf.sigmoid(scores)
        elif binary:  # a single unit already holding the probability of class 1
            scores = probabilities = tf.concat([1.0 - z, z], axis=-1)
        elif kind in ("softmax", "linear"):
            scores, probabilities = z, tf.nn.softmax(z, axis=-1)
        elif kind == "sigmoid":  # multi-label
            scores, probabilities = z, tf.sigmoid(z)
        else:
            scores = probabilities = z
        activations = tf.cast(taps[0], tf.float32) if taps else None
        if self.layer_path and activations is None:
            raise ExplanationError(
                "The target layer was not reached when running the model. "
                f"Received: layer_name={'/'.join(self.layer_path)!r}"
            )
        return Forward(activations, scores, probabilities)
