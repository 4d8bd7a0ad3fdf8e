"""Known answers, reference implementations, errors and caching of `core.explain`."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from core.explain import (
    METHODS,
    PARAMS,
    ExplanationError,
    cached_functions,
    conv_layer_names,
    default_layer_name,
    describe,
    explain,
    get_explainer,
)
from core.explain.occlusion import window_starts


@keras.saving.register_keras_serializable(package="tests")
class ZeroRightHalf(layers.Layer):
    """Multiplies the right half of each image (columns >= width // 2) by zero."""

    def call(self, inputs):
        width = inputs.shape[2]
        keep = np.zeros((1, 1, width, 1), np.float32)
        keep[:, :, : width // 2] = 1.0
        return inputs * keep


def small_cnn(size=(16, 16), classes=3, head="activation", seed=0, first=None):
    """Input -> [first] -> Rescaling -> conv -> pool -> conv -> GAP -> Dense -> softmax."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*size, 3), name="pixels")
    x = first(inputs) if first is not None else inputs
    x = layers.Rescaling(1 / 255.0, name="rescale")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if head == "dense_softmax":
        return keras.Model(inputs, layers.Dense(classes, activation="softmax", name="logits")(x))
    if head == "sigmoid":
        return keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="logits")(x))
    x = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, layers.Activation("softmax", name="predictions")(x))


def nested_cnn(size=(16, 16)):
    """Input -> stem conv -> backbone sub-model (conv b1, conv b2) -> head conv -> GAP -> Dense -> softmax."""
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((*size, 4), name="backbone_input")
    x = layers.Conv2D(5, 3, padding="same", activation="relu", name="b1")(inner_in)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="b2")(x)
    backbone = keras.Model(inner_in, x, name="backbone")
    inputs = keras.Input((*size, 3), name="pixels")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(
        layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    )
    x = layers.Conv2D(6, 1, activation="relu", name="head_conv")(backbone(x))
    x = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inputs, layers.Activation("softmax", name="predictions")(x))


def random_images(n, size=(16, 16), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *size, 3)).astype(np.float32)


def reference_gradcam(feature_and_logits, images, classes):
    """Grad-CAM written out in plain TensorFlow; ``feature_and_logits(x) -> (A, logits)``."""
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        activations, logits = feature_and_logits(x)
        score = tf.reduce_sum(logits * tf.one_hot(classes, logits.shape[-1]), axis=-1)
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)


# ----------------------------------------------------------------------------------------------
# Known answers
# ----------------------------------------------------------------------------------------------


def test_vanilla_gradients_are_zero_where_the_model_ignores_the_input():
    model = small_cnn(size=(16, 20), first=ZeroRightHalf(name="zero_right"))
    maps = explain(model, random_images(2, (16, 20)), "vanilla_gradients")
    assert np.all(maps[:, :, 10:] == 0.0)
    assert np.all(maps[:, :, :10].max(axis=(1, 2)) == 1.0)
    assert np.count_nonzero(maps[:, :, :10]) > 100


def test_occlusion_is_zero_where_the_model_ignores_the_input():
    # Positive convolution and class-1 weights: hiding any bright pixel on the left lowers class 1.
    model = small_cnn(size=(16, 20), classes=2, first=ZeroRightHalf(name="zero_right"))
    model.get_layer("conv1").set_weights([np.full((3, 3, 3, 4), 0.1, np.float32), np.zeros(4, np.float32)])
    model.get_layer("conv2").set_weights([np.full((3, 3, 4, 6), 0.1, np.float32), np.zeros(6, np.float32)])
    model.get_layer("logits").set_weights(
        [np.tile([[-0.02, 0.02]], (6, 1)).astype(np.float32), np.zeros(2, np.float32)]
    )
    images = random_images(1, (16, 20))
    images[:, :, :10] = 255.0
    # 5x5 windows every 5 pixels: columns 0-4, 5-9 | 10-14, 15-19 never straddle the midline.
    maps = explain(model, images, "occlusion", class_index=1, patch_size=5, batch_size=3)
    assert np.all(maps[:, :, 10:] == 0.0)
    assert maps[:, :, :10].min() > 0.0 and maps.max() == pytest.approx(1.0)


def test_gradcam_matches_plain_tensorflow():
    model = small_cnn(size=(16, 24))
    images = random_images(3, (16, 24))
    grad_model = keras.Model(model.inputs, [model.get_layer("conv2").output, model.get_layer("logits").output])
    for classes in ([0, 1, 2], [2, 2, 0]):
        expected = reference_gradcam(grad_model, images, classes)
        got = explain(model, images, "gradcam", class_index=classes)
        assert np.count_nonzero(expected) > 10
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # an earlier layer, by name
    grad_model = keras.Model(model.inputs, [model.get_layer("conv1").output, model.get_layer("logits").output])
    expected = reference_gradcam(grad_model, images, [1, 1, 1])
    np.testing.assert_allclose(explain(model, images, "gradcam", 1, layer_name="conv1"), expected, atol=1e-5)


def test_gradcam_options_use_softmax_and_guided_grads():
    model = small_cnn()
    images = random_images(2)
    grad_model = keras.Model(model.inputs, [model.get_layer("conv2").output, model.output])
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        activations, probabilities = grad_model(x)
        score = probabilities[:, 1]
    grads = tape.gradient(score, activations)
    guided = tf.cast(activations > 0, tf.float32) * tf.cast(grads > 0, tf.float32) * grads
    for option, g in (({"use_softmax": True}, grads), ({"use_softmax": True, "use_guided_grads": True}, guided)):
        cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, axis=(1, 2), keepdims=True) * activations, axis=-1))
        cam = tf.image.resize(cam[..., None], (16, 16))[..., 0].numpy()
        expected = cam / cam.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(explain(model, images, "gradcam", 1, **option), expected, atol=1e-5)


def test_gradcam_on_a_layer_inside_a_nested_backbone_matches_plain_tensorflow():
    model = nested_cnn()
    backbone = model.get_layer("backbone")
    inner = keras.Model(backbone.inputs, [backbone.get_layer("b1").output, backbone.output])

    def feature_and_logits(x):
        stem = model.get_layer("stem")(model.get_layer("rescale")(x))
        b1, features = inner(stem)
        pooled = model.get_layer("gap")(model.get_layer("head_conv")(features))
        return b1, model.get_layer("logits")(pooled)

    images = random_images(2)
    expected = reference_gradcam(feature_and_logits, images, [0, 2])
    assert np.count_nonzero(expected) > 10
    np.testing.assert_allclose(explain(model, images, "gradcam", [0, 2], layer_name="b1"), expected, atol=1e-5)
    np.testing.assert_allclose(explain(model, images, "gradcam", [0, 2], layer_name="backbone/b1"), expected, atol=1e-5)


def test_gradcam_inside_a_backbone_of_a_sequential_model_matches_plain_tensorflow():
    keras.utils.set_random_seed(12)
    inner_in = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="b1")(layers.Rescaling(1 / 255.0)(inner_in))
    backbone = keras.Model(inner_in, layers.Conv2D(6, 3, activation="relu", name="b2")(x), name="backbone")
    gap, dense = layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")
    model = keras.Sequential([keras.Input((16, 16, 3)), backbone, gap, dense])
    assert conv_layer_names(model)[-2:] == ["b1", "b2"] and default_layer_name(model) == "b2"
    inner = keras.Model(backbone.inputs, [backbone.get_layer("b1").output, backbone.output])
    kernel, bias = dense.get_weights()

    def feature_and_logits(x):
        b1, features = inner(x)
        return b1, tf.matmul(gap(features), kernel) + bias

    images = random_images(2)
    expected = reference_gradcam(feature_and_logits, images, [1, 0])
    np.testing.assert_allclose(explain(model, images, "gradcam", [1, 0], layer_name="b1"), expected, atol=1e-5)


def test_a_saved_and_reloaded_model_explains_the_same(tmp_path):
    from core.models import build_model, load_model

    model = build_model("compact_cnn", num_classes=3, image_size=32)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    images = random_images(2, (32, 32))
    for method in METHODS:
        params = get_explainer(method).fast_params
        np.testing.assert_allclose(
            explain(loaded, images, method, **params), explain(model, images, method, **params), atol=1e-5
        )


def test_default_layer_inside_a_nested_backbone():
    from core.models import build_model

    model = build_model("compact_cnn", num_classes=2, image_size=(24, 32))
    assert default_layer_name(model) == "top_conv"  # inside the nested 'compact_cnn' sub-model
    names = conv_layer_names(model)
    assert (
        "preprocessing" not in names
        and names[0] == "block1_conv"
        and names.index("block1_conv") < names.index("block3_pool") < names.index("top_conv")
    )
    images = random_images(1, (24, 32))
    np.testing.assert_array_equal(
        explain(model, images, "gradcam"), explain(model, images, "gradcam", layer_name="compact_cnn/top_conv")
    )


def test_conv_layer_names_lists_nested_layers_in_network_order():
    model = nested_cnn()
    assert conv_layer_names(model) == ["rescale", "stem", "b1", "b2", "head_conv"]
    assert default_layer_name(model) == "head_conv"
    flat = keras.Sequential([keras.Input((8, 8, 3)), layers.Flatten(), layers.Dense(2, activation="softmax")])
    assert conv_layer_names(flat) == [] and default_layer_name(flat) is None


def test_dense_softmax_head_gives_the_same_maps_as_dense_plus_activation():
    split = small_cnn(head="activation", seed=4)
    fused = small_cnn(head="dense_softmax", seed=5)
    fused.set_weights(split.get_weights())
    images = random_images(2)
    np.testing.assert_allclose(np.asarray(fused(images)), np.asarray(split(images)), atol=1e-6)
    for method in ("vanilla_gradients", "gradcam"):
        expected = explain(split, images, method, class_index=[0, 2])
        np.testing.assert_allclose(explain(fused, images, method, class_index=[0, 2]), expected, atol=1e-6)
    # the score really is before softmax: the gradient of the probability differs
    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_allclose,
        explain(split, images, "gradcam", class_index=[0, 2], use_softmax=True),
        explain(split, images, "gradcam", class_index=[0, 2]),
        atol=1e-3,
    )


def reference_occlusion(model, image, class_index, patch_size, stride):
    """Slow occlusion sensitivity from tf-explain's own ``apply_grey_patch``, one copy at a time."""
    from tf_explain.utils.image import apply_grey_patch

    height, width = image.shape[:2]

    def starts(size):  # every `stride` pixels until a window reaches the border
        return [s for s in range(0, size, stride) if s == 0 or s - stride + patch_size < size]

    base = float(model(image[None], training=False)[0, class_index])
    sums, counts = np.zeros((height, width)), np.zeros((height, width))
    for top in starts(height):
        for left in starts(width):
            patched = apply_grey_patch(image, top_left_x=left, top_left_y=top, patch_size=patch_size)
            drop = base - float(model(patched[None], training=False)[0, class_index])
            sums[top : top + patch_size, left : left + patch_size] += drop
            counts[top : top + patch_size, left : left + patch_size] += 1
    mean = sums / counts
    return (mean - mean.min()) / (mean.max() - mean.min())


@pytest.mark.parametrize("patch_size,stride", [(6, 6), (5, 3)])
def test_occlusion_matches_a_reference_built_from_tf_explain_apply_grey_patch(patch_size, stride):
    model = small_cnn(size=(20, 28), seed=2)
    images = random_images(2, (20, 28), seed=5)
    maps = explain(model, images, "occlusion", class_index=[1, 2], patch_size=patch_size, stride=stride, batch_size=7)
    for image, class_index, got in zip(images, [1, 2], maps):
        np.testing.assert_allclose(got, reference_occlusion(model, image, class_index, patch_size, stride), atol=2e-4)
    assert window_starts(20, 5, 3) == [0, 3, 6, 9, 12, 15]
    assert window_starts(28, 6, 6) == [0, 6, 12, 18, 24]


def test_binary_sigmoid_model_scores_class_0_with_the_negated_logit():
    model = small_cnn(head="sigmoid", seed=3)
    images = random_images(2)
    class_1 = explain(model, images, "vanilla_gradients", class_index=1)
    np.testing.assert_allclose(explain(model, images, "vanilla_gradients", class_index=0), class_1, atol=1e-6)

    grad_model = keras.Model(model.inputs, [model.get_layer("conv2").output, model.get_layer("logits").input])
    kernel, bias = model.get_layer("logits").get_weights()

    def feature_and_logit(x, sign):
        activations, pooled = grad_model(x)
        logit = tf.matmul(pooled, kernel) + bias
        return activations, tf.concat([sign * logit, sign * logit], axis=-1)  # column 0 read below

    for class_index, sign in ((0, -1.0), (1, 1.0)):
        expected = reference_gradcam(lambda x, sign=sign: feature_and_logit(x, sign), images, [0, 0])
        np.testing.assert_allclose(explain(model, images, "gradcam", class_index=class_index), expected, atol=1e-5)
    # probabilities [1 - p, p]: what lowers p raises 1 - p
    occ_1 = explain(model, images, "occlusion", class_index=1, patch_size=4)
    occ_0 = explain(model, images, "occlusion", class_index=0, patch_size=4)
    np.testing.assert_allclose(occ_0, 1.0 - occ_1, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_class_index_none_explains_each_images_predicted_class(method):
    model = small_cnn(seed=6)
    kernel, _ = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel, np.array([0.0, 0.0, 0.1], np.float32)])
    images = random_images(6, seed=1) * np.linspace(0.05, 1.0, 6)[:, None, None, None]  # dark: class 2
    predicted = np.asarray(model(images)).argmax(axis=1)
    assert len(set(predicted)) > 1  # the check means something only if predictions differ
    params = get_explainer(method).fast_params
    np.testing.assert_allclose(
        explain(model, images, method, **params),
        explain(model, images, method, class_index=predicted, **params),
        atol=1e-6,
    )
    # an int applies to every image
    np.testing.assert_allclose(
        explain(model, images, method, class_index=2, **params),
        explain(model, images, method, class_index=[2] * 6, **params),
        atol=1e-6,
    )


# ----------------------------------------------------------------------------------------------
# Compiled-function cache
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_repeated_explanations_never_retrace(method):
    model = small_cnn(seed=8)
    params = get_explainer(method).fast_params
    explain(model, random_images(1, seed=1), method, **params)
    ((key, function),) = cached_functions(model).items()
    assert function.experimental_get_tracing_count() == 1
    explain(model, random_images(3, seed=2), method, class_index=[0, 1, 2], **params)
    explain(model, random_images(2, seed=3).astype(np.uint8), method, class_index=1, **params)
    explain(model, random_images(1, seed=4), method, **params)
    assert cached_functions(model) == {key: function}
    assert function.experimental_get_tracing_count() == 1
    # other options compile a second function, once
    other = {"patch_size": 8} if method == "occlusion" else None
    if "layer_name" in describe(method)["params"]:
        other = {**params, "layer_name": "conv1"}
    if other is not None:
        explain(model, random_images(1), method, **other)
        explain(model, random_images(2), method, **other)
        assert len(cached_functions(model)) == 2
        assert all(f.experimental_get_tracing_count() == 1 for f in cached_functions(model).values())


def test_cache_does_not_keep_a_dropped_model_alive():
    model = small_cnn(seed=9)
    explain(model, random_images(1), "gradcam")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_concurrent_first_calls_compile_once_and_agree(monkeypatch):
    from core.explain.base import Explainer

    compiles = []
    original = Explainer._compile

    def slow_compile(self, *args, **kwargs):  # widen the race window
        compiles.append(self.name)
        time.sleep(0.3)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "_compile", slow_compile)
    model = small_cnn(seed=10)
    images = random_images(2)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = explain(model, images, "gradcam", class_index=1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert compiles == ["gradcam"]
    (function,) = cached_functions(model).values()
    assert function.experimental_get_tracing_count() == 1
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


# ----------------------------------------------------------------------------------------------
# Registry and errors
# ----------------------------------------------------------------------------------------------


def test_registry_exposes_methods_and_their_parameters():
    assert {"gradcam", "occlusion", "vanilla_gradients"} <= set(METHODS) and len(set(METHODS)) == len(METHODS)
    for method in METHODS:
        assert get_explainer(method).name == method
        assert PARAMS[method] == {name: spec["default"] for name, spec in describe(method)["params"].items()}
    assert PARAMS["gradcam"] == {"layer_name": None, "use_guided_grads": False, "use_softmax": False}
    assert PARAMS["occlusion"]["patch_size"] == 8 and PARAMS["occlusion"]["batch_size"] == 64
    assert PARAMS["vanilla_gradients"] == {}
    info = describe("occlusion")
    assert info["title"] == "Occlusion sensitivity" and info["params"]["stride"]["default"] is None
    assert issubclass(ExplanationError, ValueError)


@pytest.fixture(scope="module")
def model():
    return small_cnn(seed=11)


@pytest.mark.parametrize(
    "call,fragments",
    [
        (
            lambda m, x: explain(m, x, "deep_taylor"),
            ["Unknown explanation method", "gradcam", "Received: method='deep_taylor'"],
        ),
        (
            lambda m, x: explain(m, x, "gradcam", layer_name="foo"),
            ["gradcam", "4-D", "conv2", "Received: layer_name='foo'"],
        ),
        (
            lambda m, x: explain(m, x, "gradcam", layer_name="logits"),
            ["gradcam", "not 4-D", "Received: layer_name='logits'"],
        ),
        (
            lambda m, x: explain(m, x[0], "vanilla_gradients"),
            ["vanilla_gradients", "(N, H, W, 3)", "Received: shape (16, 16, 3)"],
        ),
        (lambda m, x: explain(m, x[..., :1], "gradcam"), ["gradcam", "(N, H, W, 3)", "Received: shape (1, 16, 16, 1)"]),
        (
            lambda m, x: explain(m, x[:, :8], "occlusion"),
            ["occlusion", "height 16 and width 16", "Received: shape (1, 8, 16, 3)"],
        ),
        (lambda m, x: explain(m, x > 0, "gradcam"), ["gradcam", "numeric dtype", "Received: dtype=bool"]),
        (lambda m, x: explain(m, x.astype(str), "gradcam"), ["gradcam", "numeric dtype", "Received: dtype=<U"]),
        (
            lambda m, x: explain(m, x, "gradcam", class_index=3),
            ["gradcam", "[0, 2]", "3 classes", "Received: class_index=3"],
        ),
        (lambda m, x: explain(m, x, "occlusion", class_index=-1), ["occlusion", "[0, 2]", "Received: class_index=-1"]),
        (
            lambda m, x: explain(m, x, "gradcam", class_index=[0, 1]),
            ["gradcam", "sequence of 1 ints", "Received: class_index=[0, 1]"],
        ),
        (
            lambda m, x: explain(m, x, "occlusion", patch_size=0),
            ["occlusion", "patch_size", "between 1 and 16", "Received: patch_size=0"],
        ),
        (
            lambda m, x: explain(m, x, "occlusion", patch_size=17),
            ["occlusion", "16x16 image", "Received: patch_size=17"],
        ),
        (
            lambda m, x: explain(m, x, "occlusion", patch_size=4, stride=5),
            ["occlusion", "stride", "Received: stride=5"],
        ),
        (lambda m, x: explain(m, x, "occlusion", batch_size=0), ["occlusion", "batch_size", "Received: batch_size=0"]),
        (lambda m, x: explain(m, x, "gradcam", patch_size=4), ["gradcam", "layer_name", "Received: patch_size=4"]),
    ],
)
def test_errors_say_what_was_expected_and_received(model, call, fragments):
    with pytest.raises(ExplanationError) as info:
        call(model, random_images(1))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_gradcam_on_a_model_without_a_4d_layer_is_an_explanation_error():
    flat = keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Flatten(), layers.Dense(2, activation="softmax")], name="flat"
    )
    with pytest.raises(
        ExplanationError, match=r"gradcam: expected a model with a layer whose output is 4-D.*Received: model 'flat'"
    ):
        explain(flat, random_images(1, (8, 8)), "gradcam")
    # methods that need no inner layer still work on it
    assert explain(flat, random_images(1, (8, 8)), "vanilla_gradients").max() == pytest.approx(1.0)


def test_a_new_method_is_one_module_and_one_registry_line(monkeypatch):
    import sys
    import types

    import core.explain as registry
    from core.explain.gradients import GradientExplainer, score_and_gradient

    module = types.ModuleType("core.explain.squared_gradients")

    class SquaredGradients(GradientExplainer):
        name = "squared_gradients"
        title = "Squared gradients"
        params = {}

        def gradient_map(self, score_model, images, classes, options):
            grads, _, _ = score_and_gradient(score_model, images, classes)
            return tf.reduce_sum(tf.square(grads), axis=-1)

    SquaredGradients.__module__ = module.__name__
    module.SquaredGradients = SquaredGradients
    monkeypatch.setitem(sys.modules, module.__name__, module)

    found = registry._discover(("vanilla_gradients", "squared_gradients"))
    assert list(found) == ["vanilla_gradients", "squared_gradients"]
    model = small_cnn(seed=14)
    images = random_images(2, seed=14)
    vanilla = found["vanilla_gradients"].explain(model, images, [0, 1], normalize=False)
    squared = found["squared_gradients"].explain(model, images, [0, 1], normalize=False)
    assert squared.shape == vanilla.shape and np.all(squared <= vanilla**2 + 1e-12)
    with pytest.raises(ImportError, match="one named Explainer subclass"):
        registry._discover(("base",))
