"""The class-activation-map family: one pipeline, one step that differs (the channel weights).

``cam = ReLU(sum_k w_k A^k)``, ``A`` the target layer's activations (N, h, w, K), upsampled bilinearly to the
input size. `CAMExplainer` owns the target layer (``layer_name``), the forward pass with a tap on that layer
(inside a nested backbone too, see `graph.ScoreModel`), the gradient of the class score with respect to
``A`` where the method needs it, the weighted sum, the ReLU and the upsampling. A subclass overrides only
`CAMExplainer.channel_weights` (Grad-CAM: the mean gradient; Grad-CAM++: the closed-form alphas; Score-CAM:
the score of the input masked by each channel).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import keras
import tensorflow as tf

from . import graph
from .base import Cost, Explainer, bare_floor
from .common import ExplanationError, Param, pick, resolve_classes

LAYER_PARAM = Param(
    None,
    "Layer with a 4-D output to explain; None: the last one (see conv_layer_names).",
    kind="layer",
    nullable=True,
)


class CAMInputs(NamedTuple):
    """What `CAMExplainer.channel_weights` may use."""

    activations: tf.Tensor  # (N, h, w, K) the target layer's output
    grads: tf.Tensor | None  # (N, h, w, K) d score / d activations (None when ``needs_gradients`` is False)
    score_model: graph.ScoreModel  # the model (scores and probabilities) for methods that run it again
    images: tf.Tensor  # (N, H, W, 3) the pixels explained
    classes: tf.Tensor  # (N,) the resolved class indices
    options: dict  # the method's checked options


class CAMExplainer(Explainer):
    """Base of the CAM methods; subclasses set the class attributes and override `channel_weights`."""

    params: ClassVar[dict[str, Param]] = {"layer_name": LAYER_PARAM}
    units = "ReLU of the weighted sum of the layer's channels, upsampled"
    needs_gradients: ClassVar[bool] = True

    def channel_weights(self, inputs: CAMInputs) -> tf.Tensor:
        """(N, K) weight of each channel of each image's activations."""
        raise NotImplementedError

    def check_params(self, model, height, width, **params) -> dict[str, Any]:
        options = super().check_params(model, height, width, **params)
        return {**options, "layer_name": resolve_layer(self.name, model, options["layer_name"])}

    def attribute(self, model, images, class_index, options):
        score_model = graph.ScoreModel(model, options["layer_name"])
        with tf.GradientTape() as tape:
            forward = score_model(images)
            classes = resolve_classes(class_index, forward.probabilities)
            target = forward.probabilities if options.get("use_softmax") else forward.scores
            score = pick(target, classes)
        activations = forward.activations
        grads = tape.gradient(score, activations) if self.needs_gradients else None
        weights = self.channel_weights(CAMInputs(activations, grads, score_model, images, classes, options))
        cams = tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, weights))
        return upsample(cams, images.shape[1], images.shape[2])

    def cost(self, options, height, width):
        return Cost("gradient", 1)

    def floor(self, model, options, height, width):
        """The forward pass, then the gradient of the class score with respect to the top-level layer that
        holds the target layer (its output when that layer is a nested backbone's output), nothing else."""
        path = options["layer_name"]
        try:
            outer = model.get_layer(path[0])
            if len(path) > 1 and graph.layer_at(model, path).output is not outer.output:
                raise ValueError("the target layer is not the backbone's output")
            # the tensor the outer model's own call of that layer made (a backbone's `.output` is its inner one)
            tensor = [node.outputs[0] for node in outer._inbound_nodes if len(node.outputs) == 1][-1]
            features = keras.Model(model.inputs, tensor)
            head = keras.Model(tensor, model.output)
        except Exception:  # a Sequential model or a layer deep in a backbone: the input gradient is close
            return bare_floor(model, Cost("gradient", 1))

        def floor(images, class_index):
            activations = features(images, training=False)
            with tf.GradientTape() as tape:
                tape.watch(activations)
                score = pick(head(activations, training=False), class_index)
            grads = tape.gradient(score, activations)
            return tf.reduce_sum(tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, tf.reduce_mean(grads, (1, 2)))))

        return floor


def upsample(cams: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """(N, h, w) -> (N, H, W), bilinear."""
    return tf.image.resize(cams[..., None], (height, width), method="bilinear")[..., 0]


def resolve_layer(method: str, model, layer_name) -> graph.LayerPath:
    """The `graph.LayerPath` of ``layer_name`` (None: the last 4-D layer), or an `ExplanationError`."""
    if layer_name is None:
        layer_name = graph.default_layer_name(model)
        if layer_name is None:
            raise ExplanationError(
                f"{method}: expected a model with a layer whose output is 4-D (N, H, W, C), such as a "
                f"convolution. Received: model {getattr(model, 'name', '?')!r} with no such layer"
            )
    path = graph.find_layer(model, layer_name)
    if path is None or len(graph.layer_at(model, path).output.shape) != 4:
        names = graph.conv_layer_names(model)
        shown = ", ".join(names[-8:]) + (", ..." if len(names) > 8 else "")
        what = "no layer of that name" if path is None else "its output is not 4-D"
        raise ExplanationError(
            f"{method}: expected layer_name to name a layer with a 4-D output (e.g. {shown or 'none here'}); "
            f"{what}. Received: layer_name={layer_name!r}"
        )
    return path
