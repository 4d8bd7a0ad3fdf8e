"""Importing a model the user trained: safe loading, formats, preprocessing, class checks, explanations."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from core import runs
from core.data import load_images
from core.explain import ExplanationError, conv_layer_names, explain
from core.importing import import_run
from core.model_import import UnsafeModelError, load_run_model, load_user_model, wrap_for_pixels
from core.models import ModelError, PixelPreprocessing, predict_proba
from core.shapes import generate_shapes_dataset

SIZE = 16


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=6, image_size=SIZE, seed=2)


@pytest.fixture(scope="module")
def two_shapes(tmp_path_factory, shapes):
    root = tmp_path_factory.mktemp("data2") / "binary"
    shutil.copytree(shapes, root)
    for split in ("train", "val", "test"):
        shutil.rmtree(root / split / "triangle")
    return root


def _small_cnn(classes=3, activation="softmax", channels=3):
    inputs = keras.Input((SIZE, SIZE, channels))
    x = layers.Conv2D(4, 3, activation="relu", name="conv_a")(inputs)
    x = layers.Conv2D(4, 3, activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, activation=activation, name="out")(x))


def _nested_backbone_model(classes=3):
    inner_in = keras.Input((SIZE, SIZE, 3))
    y = layers.Conv2D(4, 3, activation="relu", name="inner_conv1")(inner_in)
    y = layers.Conv2D(6, 3, activation="relu", name="inner_conv2")(y)
    backbone = keras.Model(inner_in, y, name="backbone")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, layers.Dense(classes, activation="softmax")(x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_import_keras_and_h5_files(tmp_path, shapes, suffix):
    model = _small_cnn()
    model.save(tmp_path / f"m{suffix}")
    run = import_run(tmp_path / "ws", tmp_path / f"m{suffix}", shapes, "unit")
    assert run.is_complete and run.meta["source"] == "imported" and run.meta["input_size"] == [SIZE, SIZE]
    predictions = runs.load_predictions(run)
    images = load_images(list(predictions["path"]), (SIZE, SIZE))
    expected = np.asarray(model(images / 255.0))  # the user's model on its own preprocessing
    np.testing.assert_allclose(predictions[[f"prob_{c}" for c in run.class_names]].to_numpy(), expected, atol=1e-5)
    assert runs.load_metrics(run)["n_samples"] == len(predictions)


def test_import_savedmodel_folder(tmp_path, shapes):
    model = _small_cnn()
    model.export(tmp_path / "saved", verbose=False)
    run = import_run(tmp_path / "ws", tmp_path / "saved", shapes, "symmetric")
    assert run.is_complete and (run.path / "savedmodel" / "saved_model.pb").exists()
    shutil.rmtree(tmp_path / "saved")  # the run no longer depends on the original folder
    loaded = load_run_model(run.path)
    image = load_images([runs.load_predictions(run)["path"][0]], (SIZE, SIZE))
    np.testing.assert_allclose(predict_proba(loaded, image), np.asarray(model(image / 127.5 - 1.0)), atol=1e-5)
    maps = explain(loaded, image, "vanilla_gradients")
    assert maps.shape == (1, SIZE, SIZE) and maps.max() == pytest.approx(1.0)
    # A SavedModel is opaque: no inner layer to target, and Grad-CAM says so instead of failing.
    assert conv_layer_names(loaded) == []
    with pytest.raises(ExplanationError, match="gradcam: expected a model with a layer whose output is 4-D"):
        explain(loaded, image, "gradcam")


def _lambda_model(marker):
    target = str(marker)  # a plain string: Keras stores the closure with the function's bytecode
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Lambda(lambda t: (open(target, "w").write("pwned"), t)[1], name="evil")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3)(x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_model_is_refused_and_its_code_never_runs(tmp_path, shapes, suffix):
    marker = tmp_path / "created_by_the_model.txt"
    _lambda_model(marker).save(tmp_path / f"evil{suffix}")
    marker.unlink(missing_ok=True)  # building and saving traced the lambda once
    with pytest.raises(UnsafeModelError, match="Lambda layer"):
        import_run(tmp_path / "ws", tmp_path / f"evil{suffix}", shapes, "unit")
    assert not marker.exists()
    assert runs.list_runs(tmp_path / "ws") == []  # refused before a run was created


def test_savedmodel_that_writes_files_is_refused(tmp_path, shapes):
    marker = tmp_path / "written_by_graph.txt"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "pwned")
            return tf.reduce_mean(x, axis=[1, 2])

    module = Writer()
    tf.saved_model.save(module, str(tmp_path / "writer"), signatures={"serving_default": module.serve})
    with pytest.raises(UnsafeModelError, match="WriteFile"):
        import_run(tmp_path / "ws", tmp_path / "writer", shapes, "unit")
    assert not marker.exists()


def test_binary_sigmoid_model_everywhere(tmp_path, two_shapes):
    model = _small_cnn(classes=1, activation="sigmoid")
    model.save(tmp_path / "binary.keras")
    run = import_run(tmp_path / "ws", tmp_path / "binary.keras", two_shapes, "unit")
    assert run.class_names == ["circle", "square"]
    predictions = runs.load_predictions(run)
    probs = predictions[["prob_circle", "prob_square"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    metrics = runs.load_metrics(run)
    assert set(metrics["per_class"]) == {"circle", "square"}
    loaded = load_run_model(run.path)
    image = load_images([predictions["path"][0]], (SIZE, SIZE))
    positive = explain(loaded, image, "gradcam", class_index=1)
    negative = explain(loaded, image, "gradcam", class_index=0)
    assert positive.shape == negative.shape == (1, SIZE, SIZE)
    assert not np.allclose(positive, negative)  # the negative class uses the negated score


def test_nested_backbone_gradcam_layer_inside_the_backbone(tmp_path, shapes):
    _nested_backbone_model().save(tmp_path / "nested.keras")
    run = import_run(tmp_path / "ws", tmp_path / "nested.keras", shapes, "unit")
    loaded = load_run_model(run.path)
    names = conv_layer_names(loaded)
    assert names.index("inner_conv1") < names.index("inner_conv2")
    image = load_images([runs.load_predictions(run)["path"][0]], (SIZE, SIZE))
    for layer_name in ("inner_conv1", "inner_conv2"):
        saliency = explain(loaded, image, "gradcam", layer_name=layer_name)
        assert saliency.shape == (1, SIZE, SIZE) and np.isfinite(saliency).all()


def test_class_names_give_the_output_order(tmp_path, shapes):
    model = _small_cnn()
    model.save(tmp_path / "m.keras")
    run = import_run(
        tmp_path / "ws", tmp_path / "m.keras", shapes, "unit", class_names=["triangle", "circle", "square"]
    )
    predictions = runs.load_predictions(run)
    assert run.class_names == ["triangle", "circle", "square"]
    triangle = predictions[predictions["path"].str.contains("/triangle/")]
    assert (triangle["true_label"] == 0).all() and (triangle["true_class"] == "triangle").all()
    with pytest.raises(ValueError, match="do not match the dataset's class folders"):
        import_run(tmp_path / "ws", tmp_path / "m.keras", shapes, "unit", class_names=["a", "b", "c"])


def test_grayscale_model_and_logits_model_are_wrapped(tmp_path, shapes):
    grey = wrap_for_pixels(_small_cnn(channels=1), "unit", 3)
    assert grey.inputs[0].shape[-1] == 3 and "to_grayscale" in [layer.name for layer in grey.layers]
    assert conv_layer_names(grey) == ["conv_a", "conv_b"]  # the input adapters are not Grad-CAM targets
    logits = wrap_for_pixels(_small_cnn(activation=None), "raw", 3)
    out = predict_proba(logits, np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)  # a softmax was added after the logits
    assert isinstance(logits.layers[1], PixelPreprocessing)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _small_cnn(classes=2).save(p / "m.keras") or p / "m.keras", "predicts 2 classes but the data has 3"),
        (lambda p: (p / "m.txt").write_text("hi") and p / "m.txt", "Expected a .keras or .h5 file"),
        (lambda p: (p / "m.keras").write_bytes(b"not a zip") and p / "m.keras", "not a readable Keras model file"),
        (lambda p: (p / "folder").mkdir() or p / "folder", "not a SavedModel"),
        (lambda p: p / "missing.keras", "No model at"),
        (lambda p: _small_cnn().save_weights(p / "w.weights.h5") or p / "w.weights.h5", "weights only"),
    ],
)
def test_bad_model_inputs_get_clear_errors(tmp_path, shapes, make, message):
    path = make(tmp_path)
    with pytest.raises(ModelError, match=message):
        import_run(tmp_path / "ws", path, shapes, "unit")


def test_bad_preprocessing_and_input_shapes(shapes):
    with pytest.raises(ModelError, match="Unknown preprocessing"):
        wrap_for_pixels(_small_cnn(), "imagenet", 3)
    flexible = keras.Model(
        *(lambda i: (i, layers.Dense(3)(layers.GlobalAveragePooling2D()(i))))(keras.Input((None, None, 3)))
    )
    with pytest.raises(ModelError, match="fixed size"):
        wrap_for_pixels(flexible, "unit", 3)


def test_savedmodel_that_copies_a_file_through_tf_data_is_refused(tmp_path, shapes):
    """The reviewer's bypass of a short ban-list: tf.data reads one file and a TFRecord writer writes another."""
    secret, target = tmp_path / "secret.txt", tmp_path / "copied.tfrecord"
    secret.write_text("password")

    class Copier(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
        def serve(self, x):
            lines = tf.data.TextLineDataset(str(secret))
            tf.data.experimental.TFRecordWriter(str(target)).write(lines)
            return tf.reduce_mean(x, axis=[1, 2])

    module = Copier()
    tf.saved_model.save(module, str(tmp_path / "copier"), signatures={"serving_default": module.serve})
    with pytest.raises(UnsafeModelError, match="Dataset"):
        import_run(tmp_path / "ws", tmp_path / "copier", shapes, "unit")
    assert not target.exists()


def test_logit_outputs_get_their_activation(tmp_path, shapes, two_shapes):
    images = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    binary = wrap_for_pixels(_small_cnn(classes=1, activation=None), "unit", 2)
    probs = predict_proba(binary, images)
    assert probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # A SavedModel has no declared activation: a probe batch tells logits from probabilities.
    logits_model = _small_cnn(activation=None)
    logits_model.layers[-1].set_weights([w * 50 for w in logits_model.layers[-1].get_weights()])
    logits_model.export(tmp_path / "logits", verbose=False)
    wrapped = wrap_for_pixels(load_user_model(tmp_path / "logits"), "unit", 3)
    probs = predict_proba(wrapped, images)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, tf.nn.softmax(logits_model(images / 255.0)).numpy(), atol=1e-5)
    probabilities_model = _small_cnn()
    probabilities_model.export(tmp_path / "probs", verbose=False)
    untouched = wrap_for_pixels(load_user_model(tmp_path / "probs"), "unit", 3)
    np.testing.assert_allclose(predict_proba(untouched, images), probabilities_model(images / 255.0), atol=1e-5)


def test_hostile_or_unusual_model_files_get_messages(tmp_path, shapes):
    import zipfile

    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, [layers.Dense(3)(x), layers.Dense(3)(x)]).save(tmp_path / "two_outputs.keras")
    with pytest.raises(ModelError, match="one output"):
        import_run(tmp_path / "ws", tmp_path / "two_outputs.keras", shapes, "unit")
    with zipfile.ZipFile(tmp_path / "deep.keras", "w") as archive:
        archive.writestr("config.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="nested too deeply|not a readable Keras model file"):
        import_run(tmp_path / "ws", tmp_path / "deep.keras", shapes, "unit")
    marker = str(tmp_path / "activation_ran.txt")
    lambda_activation = keras.Model(inputs, layers.Dense(3, activation=lambda t: (open(marker, "w"), t)[1])(x))
    lambda_activation.save(tmp_path / "lambda_activation.keras")
    Path(marker).unlink(missing_ok=True)
    with pytest.raises(UnsafeModelError, match="__lambda__"):
        import_run(tmp_path / "ws", tmp_path / "lambda_activation.keras", shapes, "unit")
    assert not Path(marker).exists()
