"""The penultimate-layer features of a Keras classifier: what its last Dense layer sees.

`feature_layer(model)` finds the layer whose output feeds the model's last ``Dense`` layer (the
classifier), looking inside nested backbones and inside the sub-model an imported model sits in; layers
that do nothing at inference (Dropout, noise) are stepped over, so the demo model's features are read at
``avg_pool`` rather than ``head_dropout``. A model without a Dense layer (a fully convolutional
classifier) falls back to its last layer with a 4-D output. Features with spatial axes (a conv map, or a
Dense applied to one) are global-average-pooled to one vector per image.

`feature_function(model, layer)` is one compiled pass giving the features and the class probabilities
together (`core.explain.graph.ScoreModel` with a tap on that layer), so predictions and features always
come from the same forward pass. `extract_features` runs it over image files in batches, skipping files
that are gone or unreadable and counting them.

This module imports TensorFlow; `core.embeddings` imports it only when features must be computed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from core import data as data_lib
from core.explain.graph import LayerPath, ScoreModel, conv_layer_paths, is_graph_model, layer_at, walk_layers

# Layers that return their input unchanged at inference: the features are read before them.
_IDENTITY_AT_INFERENCE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


class FeatureError(ValueError):
    """The penultimate features of a model cannot be read; the message says why and what to do."""


@dataclass(frozen=True)
class FeatureLayer:
    """Where the features are read.

    Attributes:
        path: names from the outer model down to the layer whose output is read.
        dense: the path of the last Dense layer whose input this is (None: no Dense, last 4-D layer used).
    """

    path: LayerPath
    dense: LayerPath | None

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def description(self) -> str:
        if self.dense is None:
            return f"{self.name} (the last layer with a 4-D output; the model has no Dense layer)"
        return f"{self.name} (the input of the last Dense layer, {'/'.join(self.dense)})"


@dataclass
class Extracted:
    """What `extract_features` returns.

    Attributes:
        features: (n, d) float32, one row per readable image, in the order of ``kept``.
        probabilities: (n, C) float32 class probabilities from the same pass.
        kept: indices into the paths given of the images read.
        missing: paths that no longer exist.
        unreadable: (path, reason) of files that exist but cannot be decoded.
        pooled: True when the layer's output had spatial axes that were averaged.
    """

    features: np.ndarray
    probabilities: np.ndarray
    kept: list[int]
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    pooled: bool = False


# ----------------------------------------------------------------------------------------------
# Finding the layer
# ----------------------------------------------------------------------------------------------


def _input_producer(model, path: LayerPath) -> LayerPath | None:
    """The path of the layer whose output is the (first) input of the layer at ``path``, or None when that
    input is the model's own input. A layer first in a nested model is fed by what feeds the nested model."""
    container = layer_at(model, path[:-1])
    layer = container.get_layer(path[-1])
    prefix = path[:-1]
    if isinstance(container, keras.Sequential):
        index = container.layers.index(layer)
        if index > 0:
            return prefix + (container.layers[index - 1].name,)
    else:
        nodes = [node for depth in container._nodes_by_depth.values() for node in depth if node.operation is layer]
        tensors = nodes[0].input_tensors if nodes else []
        if not tensors:
            raise FeatureError(f"Cannot tell which layer feeds {'/'.join(path)}: it has no recorded input.")
        source = tensors[0]._keras_history.operation
        if not isinstance(source, keras.layers.InputLayer):
            return prefix + (source.name,)
    return _input_producer(model, prefix) if prefix else None


def feature_layer(model) -> FeatureLayer:
    """Where to read the penultimate features of ``model`` (see the module doc).

    Raises:
        FeatureError: the model's layers cannot be read (an imported SavedModel, a subclassed model), or
            its last Dense layer takes the pixels themselves.
    """
    if not is_graph_model(model):
        raise FeatureError(_opaque_message(model))
    layers = list(walk_layers(model))
    dense = [path for path, layer in layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        convs = conv_layer_paths(model)
        if not convs:
            raise FeatureError(_opaque_message(model))
        return FeatureLayer(convs[-1], None)
    path = _input_producer(model, dense[-1])
    while path is not None and isinstance(layer_at(model, path), _IDENTITY_AT_INFERENCE):
        path = _input_producer(model, path)
    if path is None:
        raise FeatureError(
            f"The last Dense layer ({'/'.join(dense[-1])}) takes the input pixels themselves: the model has no "
            "feature layer to project."
        )
    return FeatureLayer(path, dense[-1])


def _opaque_message(model) -> str:
    return (
        f"Cannot read the penultimate layer of this model ({type(model).__name__}): it has no Dense layer and no "
        "layer with a 4-D output that can be reached. An imported SavedModel is opaque: import the .keras or .h5 "
        "file instead."
    )


# ----------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------


def feature_function(model, layer: FeatureLayer) -> Callable:
    """A compiled ``images (N, H, W, 3) -> (features (N, d), probabilities (N, C), pooled)`` for ``model``;
    a layer output with spatial axes is averaged over them (global average pooling)."""
    height, width = (int(v) for v in model.inputs[0].shape[1:3])
    score_model = ScoreModel(model, layer.path)

    def run(images):
        forward = score_model(images)
        activations = forward.activations
        rank = activations.shape.rank
        pooled = rank > 2
        if pooled:
            activations = tf.reduce_mean(activations, axis=list(range(1, rank - 1)))
        return activations, forward.probabilities, tf.constant(pooled)

    return tf.function(
        run, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")], autograph=False
    )


def extract_features(
    model,
    paths: list[str],
    batch_size: int = 32,
    layer: FeatureLayer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Extracted:
    """Penultimate features and probabilities of image files, ``batch_size`` images in memory at a time.

    Files that are gone are counted in ``missing``, files that cannot be decoded in ``unreadable``; both are
    skipped. ``progress(done, total)`` is called after every batch.
    """
    layer = layer or feature_layer(model)
    height, width = (int(v) for v in model.inputs[0].shape[1:3])
    function = feature_function(model, layer)
    missing = [p for p in paths if not os.path.isfile(p)]
    gone = set(missing)
    todo = [i for i, p in enumerate(paths) if p not in gone]
    features, probabilities, kept, unreadable, pooled = [], [], [], [], False
    for start in range(0, len(todo), max(1, int(batch_size))):
        batch, indices = [], []
        for index in todo[start : start + batch_size]:
            try:
                batch.append(data_lib.load_image(paths[index], (height, width)))
                indices.append(index)
            except (data_lib.ImageError, OSError) as exc:
                unreadable.append((paths[index], str(exc)))
        if batch:
            values, probs, was_pooled = function(tf.constant(np.stack(batch).astype(np.float32)))
            features.append(values.numpy().astype(np.float32))
            probabilities.append(probs.numpy().astype(np.float32))
            kept.extend(indices)
            pooled = bool(was_pooled.numpy())
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    if features:
        return Extracted(np.concatenate(features), np.concatenate(probabilities), kept, missing, unreadable, pooled)
    return Extracted(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), [], missing, unreadable, pooled)
