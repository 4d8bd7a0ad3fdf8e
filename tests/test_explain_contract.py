"""One contract for every explanation method over every kind of model it must support."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from core.explain import METHODS, describe, explain, get_explainer


def _convs(x, prefix=""):
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{prefix}conv1")(x)
    x = layers.MaxPooling2D(2, name=f"{prefix}pool")(x)
    return layers.Conv2D(6, 3, padding="same", activation="relu", name=f"{prefix}conv2")(x)


def functional(size=(16, 16), dense_softmax=False, sigmoid=False):
    inputs = keras.Input((*size, 3), name="pixels")
    x = _convs(layers.Rescaling(1 / 255.0, name="rescale")(inputs))
    x = layers.GlobalAveragePooling2D(name="pool_avg")(x)
    if sigmoid:
        return keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="predictions")(x))
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
    "sigmoid_binary": (lambda: functional(sigmoid=True), 2),
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

    params = dict(get_explainer(method).fast_params)  # each method's cheap setting: the contract is the same
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


@pytest.mark.parametrize("kind", ["functional", "nested_backbone", "sigmoid_binary", "batch_of_3"])
@pytest.mark.parametrize("method", METHODS)
def test_raw_maps_are_finite_and_keep_the_documented_sign(models, method, kind):
    model = models[kind]
    n_images = MODEL_KINDS[kind][1]
    height, width = model.inputs[0].shape[1:3]
    images = np.random.default_rng(4).integers(0, 256, (n_images, height, width, 3), dtype=np.uint8)
    params = dict(get_explainer(method).fast_params)

    raw = explain(model, images, method, normalize=False, **params)

    assert raw.shape == (n_images, height, width) and raw.dtype == np.float32
    assert np.isfinite(raw).all()
    assert np.abs(raw).max(axis=(1, 2)).min() > 0  # some signal in every image
    if not describe(method)["signed"]:
        assert raw.min() >= 0.0
    # the normalised map is the method's own scaling of the raw map, nothing else
    normalized = explain(model, images, method, **params)
    rescaled = get_explainer(method).normalize(tf.constant(raw)).numpy()
    np.testing.assert_allclose(normalized, rescaled, atol=1e-5)


@pytest.mark.parametrize("method", [m for m in METHODS if describe(m)["signed"]])
def test_signed_methods_give_negative_values_somewhere(models, method):
    images = np.random.default_rng(5).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    raw = explain(models["batch_of_3"], images, method, normalize=False, **get_explainer(method).fast_params)
    assert raw.min() < 0.0 < raw.max()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_describes_itself_completely(method):
    info = describe(method, input_size=(32, 48))
    for key in ("title", "description", "paper", "units"):
        assert isinstance(info[key], str) and info[key], key
    assert "http" in info["paper"] and info["name"] == method
    assert isinstance(info["signed"], bool) and isinstance(info["randomized"], bool)
    if info["randomized"]:
        assert info["params"]["seed"]["kind"] == "int"
    for name, spec in info["params"].items():
        assert spec["kind"] in ("int", "float", "bool", "choice", "layer"), name
        default = spec["default"]
        if default is None:
            assert spec["nullable"], name
        elif spec["kind"] == "choice":
            assert default in spec["choices"], name
        elif spec["kind"] in ("int", "float"):
            assert (spec["minimum"] is None or default >= spec["minimum"]) and (
                spec["maximum"] is None or default <= spec["maximum"]
            ), name
    assert set(get_explainer(method).fast_params) <= set(info["params"])
