"""Architecture registry: build, save and load Keras image classifiers that take pixels (0-255).

Every model built or loaded here carries its own preprocessing as its first layer
(`PixelPreprocessing`), so callers (training, evaluation, explanations, overlays) always work in pixel
space. Heads end in a `Dense` layer named ``logits`` followed by ``Activation("softmax")`` named
``predictions``: explanations read the score before softmax from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from core.catalog import ARCHITECTURE_SPECS, PREPROCESSING_MODES, imagenet_weights_status

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelError",
    "PixelPreprocessing",
    "WeightsUnavailableError",
    "backbone_of",
    "build_model",
    "imagenet_weights_status",
    "input_size",
    "load_model",
    "predict_proba",
    "set_trainable_top",
]

_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model cannot be built, loaded or used as asked; the message says why."""


class WeightsUnavailableError(ModelError):
    """Pre-trained weights were asked for but cannot be had (offline, say)."""


@keras.saving.register_keras_serializable(package="xai_dashboard")
class PixelPreprocessing(layers.Layer):
    """Maps pixel values 0-255 (RGB) to what a network expects.

    Modes: ``raw`` (unchanged), ``unit`` (0-1), ``symmetric`` (-1..1), ``caffe`` (RGB->BGR, ImageNet mean
    subtracted, as Keras ResNet50/VGG16), ``torch`` (0-1, then ImageNet mean/std per channel).
    """

    is_input_adapter = True  # not a learned layer: explanations do not offer it as a target

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ModelError(
                f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if self.mode == "raw":
            return x
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "symmetric":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = x[..., ::-1]
            return x - keras.ops.convert_to_tensor(_IMAGENET_MEAN_RGB[::-1], dtype="float32")
        mean = keras.ops.convert_to_tensor(_TORCH_MEAN, dtype="float32")
        std = keras.ops.convert_to_tensor(_TORCH_STD, dtype="float32")
        return (x / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@dataclass(frozen=True)
class Architecture:
    """One entry of the registry."""

    name: str
    description: str
    preprocessing: str
    default_image_size: int
    build_backbone: Callable[[tuple[int, int, int], str | None], keras.Model]


def _compact_backbone(input_shape, weights):
    if weights is not None:
        raise ModelError(
            f"compact_cnn has no pre-trained weights. Expected weights=None. Received: weights={weights!r}"
        )
    inputs = keras.Input(shape=input_shape, name="backbone_input")
    x = inputs
    for block, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="top_conv")(x)
    return keras.Model(inputs, x, name="compact_cnn")


def _application(name: str):
    """A backbone builder for one Keras application (its module is imported on first use)."""

    def build(input_shape, weights):
        from keras import applications

        return getattr(applications, name)(include_top=False, weights=weights, input_shape=input_shape)

    return build


ARCHITECTURES: dict[str, Architecture] = {
    "compact_cnn": Architecture(
        "compact_cnn",
        "Three small convolution blocks and a top convolution; trains in under a minute on a CPU (the demo's model).",
        ARCHITECTURE_SPECS["compact_cnn"][1],
        ARCHITECTURE_SPECS["compact_cnn"][2],
        _compact_backbone,
    ),
}
for _name, (_keras_name, _prep, _size) in ARCHITECTURE_SPECS.items():
    if _keras_name is not None:
        ARCHITECTURES[_name] = Architecture(
            _name, f"{_keras_name} (Keras applications).", _prep, _size, _application(_keras_name)
        )


def _as_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        h, w = (int(v) for v in image_size)
    if h < 8 or w < 8:
        raise ModelError(f"Image size must be at least 8x8 pixels. Received: image_size={image_size!r}")
    return h, w


def build_model(
    arch: str,
    num_classes: int,
    image_size: int | tuple[int, int] | None = None,
    weights: str | None = None,
    dropout: float = 0.2,
) -> keras.Model:
    """Builds a classifier: pixels -> preprocessing -> backbone -> pooling -> logits -> softmax.

    Args:
        arch: a key of `ARCHITECTURES`.
        num_classes: number of output classes (at least 2).
        image_size: ``int`` or ``(height, width)``; default the architecture's own.
        weights: ``None`` (random initialisation) or ``"imagenet"``.
        dropout: dropout rate before the logits.

    Returns:
        An uncompiled `keras.Model` taking float pixels 0-255 of shape (N, H, W, 3).

    Raises:
        ModelError: unknown architecture, bad size or class count.
        WeightsUnavailableError: ImageNet weights asked for but not downloadable or found.
    """
    if arch not in ARCHITECTURES:
        raise ModelError(f"Unknown architecture. Expected one of {sorted(ARCHITECTURES)}. Received: arch={arch!r}")
    if int(num_classes) < 2:
        raise ModelError(f"A classifier needs at least 2 classes. Received: num_classes={num_classes}")
    if weights not in (None, "imagenet"):
        raise ModelError(f"Expected weights=None or 'imagenet'. Received: weights={weights!r}")
    spec = ARCHITECTURES[arch]
    h, w = _as_hw(image_size or spec.default_image_size)
    input_shape = (h, w, 3)
    try:
        backbone = spec.build_backbone(input_shape, weights)
    except ModelError:
        raise
    except Exception as exc:  # keras raises plain Exceptions when the download fails
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"ImageNet weights for {arch} could not be had ({type(exc).__name__}: {exc}). "
                "If this machine is offline, download the weights file (no-top variant) on a machine "
                "with internet access and place it in ~/.keras/models/, or train with weights=None."
            ) from exc
        raise ModelError(f"Could not build {arch} for input {input_shape}: {exc}") from exc

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = PixelPreprocessing(spec.preprocessing, name="preprocessing")(inputs)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 whatever the global dtype policy: under mixed precision the scores and the softmax stay exact.
    x = layers.Dense(int(num_classes), name="logits", dtype="float32")(x)
    outputs = layers.Activation("softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{arch}_classifier")


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a saved model with Keras ``safe_mode`` (no code inside the file is executed)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"No model file at {path}")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelError(f"Could not load the model at {path}: {type(exc).__name__}: {exc}") from exc


def input_size(model: keras.Model) -> tuple[int, int]:
    """(height, width) a model takes."""
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ModelError(f"Expected a model with a fixed (N, H, W, C) image input. Received input shape {shape}")
    return int(shape[1]), int(shape[2])


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) for pixel images (N, H, W, 3).

    A single sigmoid output is returned as two columns ``[1 - p, p]``.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ModelError(f"Expected a batch of images (N, H, W, 3). Received shape {images.shape}")
    outputs = []
    for start in range(0, len(images), batch_size):
        outputs.append(np.asarray(model(images[start : start + batch_size], training=False)))
    probs = np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0), np.float32)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs.astype(np.float32)


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested backbone model of a classifier built here (the first sub-model), or None."""
    return next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)


def set_trainable_top(model: keras.Model, fraction: float) -> int:
    """Freezes the backbone except its top ``fraction`` of layers (BatchNormalization stays frozen, as
    is usual when fine-tuning). ``fraction=0`` freezes the whole backbone; ``fraction>=1`` makes every
    layer trainable, BatchNormalization included (training from scratch). Returns the number of
    trainable backbone layers that hold weights."""
    backbone = backbone_of(model)
    if backbone is None:
        return 0
    if fraction <= 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    if fraction >= 1:
        for layer in backbone.layers:
            layer.trainable = True
        return sum(1 for layer in backbone.layers if layer.weights)
    cut = int(len(backbone.layers) * (1.0 - min(fraction, 1.0)))
    trainable = 0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
        trainable += int(layer.trainable and bool(layer.weights))
    return trainable
