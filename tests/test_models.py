"""core.models: building classifiers, their pixel preprocessing, safe loading, predict_proba."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from core import models
from core.models import ModelError, PixelPreprocessing, WeightsUnavailableError, build_model, load_model


@pytest.fixture(scope="module")
def compact():
    keras.utils.set_random_seed(0)
    return build_model("compact_cnn", 3, (48, 64))


def test_build_compact_cnn_non_square(compact):
    assert models.input_size(compact) == (48, 64)
    images = np.random.default_rng(0).uniform(0, 255, (2, 48, 64, 3)).astype(np.float32)
    probs = models.predict_proba(compact, images)
    assert probs.shape == (2, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs > 0)
    names = [layer.name for layer in compact.layers]
    assert names[1] == "preprocessing"
    assert {"logits", "predictions", "compact_cnn", "avg_pool"} <= set(names)
    assert compact.get_layer("logits").units == 3
    assert compact.get_layer("predictions").output.shape == (None, 3)
    backbone = compact.get_layer("compact_cnn")
    assert isinstance(backbone, keras.Model)
    assert "top_conv" in [layer.name for layer in backbone.layers]
    assert compact.get_layer("preprocessing").mode == "unit"


def test_build_model_square_int_size_and_no_dropout():
    model = build_model("compact_cnn", 2, 16, dropout=0)
    assert models.input_size(model) == (16, 16)
    assert "head_dropout" not in [layer.name for layer in model.layers]


PIXEL = np.array([[[[10.0, 128.0, 255.0]]]], np.float32)  # one RGB pixel, batch (1, 1, 1, 3)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("raw", [10.0, 128.0, 255.0]),
        ("unit", [10 / 255, 128 / 255, 1.0]),
        ("symmetric", [10 / 127.5 - 1, 128 / 127.5 - 1, 1.0]),
        ("caffe", [255 - 103.939, 128 - 116.779, 10 - 123.68]),  # BGR, ImageNet mean subtracted
        ("torch", [(10 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]),
    ],
)
def test_pixel_preprocessing_modes(mode, expected):
    layer = PixelPreprocessing(mode)
    out = np.asarray(layer(PIXEL))
    assert out.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-5, atol=1e-5)
    assert PixelPreprocessing.from_config(layer.get_config()).mode == mode


def test_pixel_preprocessing_accepts_uint8():
    out = np.asarray(PixelPreprocessing("unit")(PIXEL.astype(np.uint8)))
    np.testing.assert_allclose(out[0, 0, 0], [10 / 255, 128 / 255, 1.0], rtol=1e-6)


def test_architecture_registry_preprocessing():
    registry = {name: spec.preprocessing for name, spec in models.ARCHITECTURES.items()}
    assert {k: registry.get(k) for k in ("compact_cnn", "efficientnetb0", "resnet50")} == {
        "compact_cnn": "unit",
        "efficientnetb0": "raw",  # Keras' EfficientNet normalises pixels 0-255 itself
        "resnet50": "caffe",
    }
    assert set(registry.values()) <= set(models.PREPROCESSING_MODES)
    assert all(spec.name == name and spec.default_image_size >= 32 for name, spec in models.ARCHITECTURES.items())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(arch="vgg99", num_classes=3), ModelError, r"Unknown architecture.*Received: arch='vgg99'"),
        (dict(arch="compact_cnn", num_classes=1), ModelError, r"at least 2 classes. Received: num_classes=1"),
        (
            dict(arch="compact_cnn", num_classes=3, weights="imagenet21k"),
            ModelError,
            r"Received: weights='imagenet21k'",
        ),
        (dict(arch="compact_cnn", num_classes=3, weights="imagenet"), ModelError, r"compact_cnn has no pre-trained"),
        (dict(arch="compact_cnn", num_classes=3, image_size=(4, 32)), ModelError, r"at least 8x8"),
    ],
    ids=["arch", "one-class", "weights-value", "imagenet-compact", "tiny-size"],
)
def test_build_model_errors(kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        build_model(**kwargs)
    assert not isinstance(info.value, WeightsUnavailableError)


def test_pixel_preprocessing_unknown_mode():
    with pytest.raises(ModelError, match=r"Received: mode='bgr'"):
        PixelPreprocessing("bgr")


def test_imagenet_weights_offline_fail_fast(monkeypatch, tmp_path):
    # no cached weights may rescue the build: point Keras' cache at an empty folder
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"ImageNet weights for efficientnetb0 could not be had") as info:
        build_model("efficientnetb0", 3, 32, weights="imagenet")
    assert time.monotonic() - started < 20
    assert "weights=None" in str(info.value)
    assert isinstance(info.value, ModelError)


def test_save_and_load_round_trip(compact, tmp_path):
    path = tmp_path / "model.keras"
    compact.save(path)
    loaded = load_model(path)
    images = np.random.default_rng(1).uniform(0, 255, (3, 48, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(models.predict_proba(loaded, images), models.predict_proba(compact, images))
    assert loaded.get_layer("preprocessing").mode == "unit"
    assert models.input_size(loaded) == (48, 64)


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="No model file at"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="Could not load the model at"):
        load_model(tmp_path / "junk.keras")


def test_load_model_refuses_code_in_the_file(tmp_path):
    marker = tmp_path / "pwned.txt"

    # a lambda whose code (marshalled into the file) creates `marker`; the path is a constant inside it
    touch_marker = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")
    inputs = keras.Input((8, 8, 3))
    x = layers.Lambda(touch_marker, name="evil")(inputs)
    outputs = layers.Dense(2, activation="softmax")(layers.Flatten()(x))
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model ran the function once; the file must not come back

    with pytest.raises(ModelError, match="Could not load the model"):
        load_model(path)
    assert not marker.exists()

    # control: the file really carries code that runs when loaded unsafely
    keras.models.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


def test_predict_proba_sigmoid_gives_two_columns():
    inputs = keras.Input((4, 4, 3))
    x = layers.Flatten()(inputs)
    outputs = layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", bias_initializer="zeros")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].bias.assign([np.log(3.0)])  # sigmoid(log 3) = 0.75
    probs = models.predict_proba(model, np.zeros((5, 4, 4, 3)))
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs, [[0.25, 0.75]] * 5, rtol=1e-6)


def test_predict_proba_batches_and_checks_ndim(compact):
    images = np.random.default_rng(2).uniform(0, 255, (5, 48, 64, 3))
    whole = models.predict_proba(compact, images, batch_size=64)
    np.testing.assert_allclose(models.predict_proba(compact, images, batch_size=2), whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match=r"Expected a batch of images \(N, H, W, 3\). Received shape \(48, 64, 3\)"):
        models.predict_proba(compact, images[0])


def test_input_size_needs_fixed_dimensions():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ModelError, match="fixed"):
        models.input_size(model)


@pytest.mark.parametrize(
    "arch, size, file_name",
    [
        ("efficientnetb0", 224, "efficientnetb0_notop.h5"),
        ("efficientnetb3", 300, "efficientnetb3_notop.h5"),
        ("resnet50", 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("vgg16", 224, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("mobilenetv2", 160, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"),
        ("mobilenetv2", 100, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    ],
)
def test_imagenet_weights_status_looks_in_the_keras_cache(tmp_path, monkeypatch, arch, size, file_name):
    from core.models import imagenet_weights_status

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    available, message = imagenet_weights_status(arch, size)
    if not (Path("/tmp/.keras/models") / file_name).exists():
        assert not available and file_name in message and "internet needed" in message
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / file_name).write_bytes(b"\x89HDF")
    available, message = imagenet_weights_status(arch, size)
    assert available and str(tmp_path / "models" / file_name) in message


def test_imagenet_weights_status_of_an_architecture_without_weights():
    from core.models import imagenet_weights_status

    available, message = imagenet_weights_status("compact_cnn")
    assert not available and "has no pre-trained ImageNet weights" in message
