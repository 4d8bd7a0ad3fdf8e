"""One contract for every explanation method over every kind of model it must support."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from core.explain import METHODS, explain


def _convs(x, prefix=""):
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{prefix}conv1")(x)
    x = layers.MaxPooling2D(2, name=f"{prefix}pool")(x)
    return layers.Conv2D(6, 3, padding="same", activation="relu", name=f"{prefix}conv2")(x)


def functional(size=(16, 16), dense_softmax=False):
    inputs = keras.Input((*size, 3), name="pixels")
    x = _convs(layers.Rescaling(1 / 255.0, name="rescale")(inputs))
    x = layers.GlobalAveragePooling2D(name="pool_avg")(x)
    if dense_softmax:
        return keras.Model(inputs, layers.Dense(3, activation="softmax", name="predictions")(x))
    x = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, layers.Activation("softmax", name="predictions")(x))


def sequential():
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            layers.Rescaling(1 / 255.0),
            layers.Conv2D(4, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(6, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3),
            layers.Activation("softmax"),
        ]
    )


def nested():
    inner_in = keras.Input((16, 16, 3), name="backbone_input")
    backbone = keras.Model(inner_in, _convs(layers.Rescaling(1 / 255.0)(inner_in), "bb_"), name="backbone")
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = layers.GlobalAveragePooling2D()(backbone(inputs))
    x = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, layers.Activation("softmax")(x))


MODEL_KINDS = {
    "functional": (lambda: functional(), 1),
    "sequential": (sequential, 1),
    "nested_backbone": (nested, 1),
    "dense_softmax": (lambda: functional(dense_softmax=True), 1),
    "non_square": (lambda: functional(size=(24, 40)), 1),
    "batch_of_3": (lambda: functional(), 3),
}


@pytest.fixture(scope="module")
def models():
    built = {}
    for name, (build, _) in MODEL_KINDS.items():
        keras.utils.set_random_seed(7)
        built[name] = build()
    return built


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_contract_on_every_model_kind(models, method, kind):
    model = models[kind]
    n_images = MODEL_KINDS[kind][1]
    height, width = model.inputs[0].shape[1:3]
    images = np.random.default_rng(3).integers(0, 256, (n_images, height, width, 3), dtype=np.uint8)

    params = {"patch_size": 4} if method == "occlusion" else {}
    maps = explain(model, images, method, **params)

    assert isinstance(maps, np.ndarray)
    assert maps.shape == (n_images, height, width)
    assert maps.dtype == np.float32
    assert not np.isnan(maps).any()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for single in maps:  # a random model on a random image has some signal for its predicted class
        assert single.max() == pytest.approx(1.0)
        assert np.count_nonzero(single) > 1
    # float images give the same maps as uint8 ones
    np.testing.assert_allclose(explain(model, images.astype(np.float64), method, **params), maps, atol=1e-6)
