"""Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391).

``cam = ReLU(sum_k a_k A^k)`` with ``A`` the target layer's activations and ``a_k`` the spatial mean of
``d score / d A^k``, the score taken before softmax; upsampled bilinearly to the input size and divided by
its maximum. The weighting is tf-explain's own ``GradCAM.ponderate_output``, applied to the whole batch.
"""

from __future__ import annotations

import tensorflow as tf

from . import graph
from .base import Explainer, ExplanationError, Param, pick, resolve_classes


def _ponderate_output():
    """tf-explain's ``GradCAM.ponderate_output`` (imported lazily: tf_explain pulls in cv2)."""
    try:
        from tf_explain.core.grad_cam import GradCAM as TfExplainGradCAM
    except ImportError:  # pragma: no cover - tf-explain is a declared dependency
        return None
    return TfExplainGradCAM.ponderate_output


def ponderate(activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """Batched ``sum_k mean_ij(grads^k) * A^k``: (N, h, w, K) x2 -> (N, h, w)."""
    ponderate_output = _ponderate_output()
    if ponderate_output is None:
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.reduce_sum(weights * activations, axis=-1)
    # ponderate_output averages over axes (0, 1) and sums over the last one: put the batch on axis 2.
    cams = ponderate_output(tf.transpose(activations, (1, 2, 0, 3)), tf.transpose(grads, (1, 2, 0, 3)))
    return tf.transpose(cams, (2, 0, 1))


class GradCAM(Explainer):
    name = "gradcam"
    title = "Grad-CAM"
    description = "Where the target layer's features raise the class score (coarse, class-discriminative)."
    paper = "Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391"
    units = "ReLU of the gradient-weighted sum of the layer's channels (score units), upsampled"
    params = {
        "layer_name": Param(
            None,
            "Layer with a 4-D output to explain; None: the last one (see conv_layer_names).",
            kind="layer",
            nullable=True,
        ),
        "use_guided_grads": Param(
            False, "Keep only positive gradients where activations are positive (tf-explain's default).", kind="bool"
        ),
        "use_softmax": Param(False, "Differentiate the probability (after softmax) instead of the score.", kind="bool"),
    }

    def check_params(self, model, height, width, **params):
        options = super().check_params(model, height, width, **params)
        layer_name = options["layer_name"]
        if layer_name is None:
            layer_name = graph.default_layer_name(model)
            if layer_name is None:
                raise ExplanationError(
                    "gradcam: expected a model with a layer whose output is 4-D (N, H, W, C), such as a "
                    f"convolution. Received: model {getattr(model, 'name', '?')!r} with no such layer"
                )
        path = graph.find_layer(model, layer_name)
        if path is None or len(graph.layer_at(model, path).output.shape) != 4:
            names = graph.conv_layer_names(model)
            shown = ", ".join(names[-8:]) + (", ..." if len(names) > 8 else "")
            what = "no layer of that name" if path is None else "its output is not 4-D"
            raise ExplanationError(
                f"gradcam: expected layer_name to name a layer with a 4-D output (e.g. {shown or 'none here'}); "
                f"{what}. Received: layer_name={layer_name!r}"
            )
        for key in ("use_guided_grads", "use_softmax"):
            if not isinstance(options[key], bool):
                raise ExplanationError(f"gradcam: expected {key} a bool. Received: {key}={options[key]!r}")
        return {**options, "layer_name": path}

    def attribute(self, model, images, class_index, options):
        score_model = graph.ScoreModel(model, options["layer_name"])
        with tf.GradientTape() as tape:
            forward = score_model(images)
            classes = resolve_classes(class_index, forward.probabilities)
            target = forward.probabilities if options["use_softmax"] else forward.scores
            score = pick(target, classes)
        activations = forward.activations
        grads = tape.gradient(score, activations)
        if options["use_guided_grads"]:  # tf-explain's GradCAM.get_gradients_and_filters
            grads = tf.cast(activations > 0, tf.float32) * tf.cast(grads > 0, tf.float32) * grads
        cams = tf.nn.relu(ponderate(activations, grads))
        height, width = images.shape[1], images.shape[2]
        return tf.image.resize(cams[..., None], (height, width), method="bilinear")[..., 0]
