"""Known answers of the methods added for issue 6: each against its paper's formula or a direct loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from core.explain import METHODS, ExplanationError, describe, explain, get_explainer


class KeepLeftHalf(layers.Layer):
    """Multiplies the right half of each image (columns >= width // 2) by zero: the model sees the left."""

    def call(self, inputs):
        width = inputs.shape[2]
        keep = np.zeros((1, 1, width, 1), np.float32)
        keep[:, :, : width // 2] = 1.0
        return inputs * keep


def small_cnn(size=(16, 16), classes=3, seed=0, first=None):
    """Input -> [first] -> Rescaling -> conv -> pool -> conv -> GAP -> Dense 'logits' -> softmax."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*size, 3), name="pixels")
    x = first(inputs) if first is not None else inputs
    x = layers.Rescaling(1 / 255.0, name="rescale")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, layers.Activation("softmax", name="predictions")(x))


def left_looking_model(size=(32, 32)):
    """Positive weights on the left half only: brighter left pixels raise class 1, the right is ignored.
    The logits are scaled so that class 1's probability goes from ~0.02 (black) to ~0.98 (`two_halves`)."""
    model = small_cnn(size=size, classes=2, first=KeepLeftHalf(name="keep_left"))
    model.get_layer("conv1").set_weights([np.full((3, 3, 3, 4), 0.1, np.float32), np.zeros(4, np.float32)])
    model.get_layer("conv2").set_weights([np.full((3, 3, 4, 6), 0.1, np.float32), np.zeros(6, np.float32)])
    model.get_layer("logits").set_weights(
        [np.tile([[-0.37, 0.37]], (6, 1)).astype(np.float32), np.array([2.0, -2.0], np.float32)]
    )
    return model


def random_images(n, size=(16, 16), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *size, 3)).astype(np.float32)


def scores(model, images, classes):
    """The class scores before softmax (the 'logits' layer)."""
    logits = keras.Model(model.inputs[0], model.get_layer("logits").output)(images).numpy()
    return logits[np.arange(len(images)), classes]


def scale_by_max(maps):
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0)


def upsample(maps, size):
    return tf.image.resize(np.asarray(maps, np.float32)[..., None], size, method="bilinear")[..., 0].numpy()


# ----------------------------------------------------------------------------------------------
# Integrated Gradients and Gradient x Input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["black", "grey", "blur", "noise"])
def test_integrated_gradients_satisfy_completeness(baseline):
    model = small_cnn(seed=1)
    images = random_images(2, seed=1)
    classes = np.array([0, 2])
    raw = explain(model, images, "integrated_gradients", classes, normalize=False, baseline=baseline, steps=256)

    from core.explain.gradients import baseline_images

    reference = baseline_images(tf.constant(images), baseline, 0).numpy()
    change = scores(model, images, classes) - scores(model, reference, classes)
    assert np.abs(change).min() > 1e-3  # the check means something only if the score moves
    np.testing.assert_allclose(raw.sum(axis=(1, 2)), change, rtol=0.02)
    # chunked passes (batch_size 7, not a divisor of 2 x 257 path images) give the same attributions
    chunked = explain(
        model, images, "integrated_gradients", classes, normalize=False, baseline=baseline, steps=256, batch_size=7
    )
    np.testing.assert_allclose(chunked, raw, rtol=1e-4, atol=1e-6)


def test_on_a_linear_model_integrated_gradients_equal_gradient_x_input_exactly():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 10, 3))
    x = layers.Dense(3, name="logits")(layers.Flatten()(layers.Rescaling(1 / 255.0)(inputs)))
    model = keras.Model(inputs, layers.Activation("softmax")(x))
    images = random_images(3, (8, 10), seed=2)
    for baseline in ("black", "grey"):
        gxi = explain(model, images, "gradient_x_input", 1, normalize=False, baseline=baseline)
        ig = explain(model, images, "integrated_gradients", 1, normalize=False, baseline=baseline, steps=3)
        np.testing.assert_allclose(ig, gxi, rtol=1e-4, atol=1e-7)
        reference = np.zeros_like(images) if baseline == "black" else np.full_like(images, 127.5)
        change = scores(model, images, [1, 1, 1]) - scores(model, reference, [1, 1, 1])
        np.testing.assert_allclose(gxi.sum(axis=(1, 2)), change, rtol=1e-4)


def test_gradient_x_input_is_gradient_times_the_difference_from_the_baseline():
    model = small_cnn(seed=3)
    images = random_images(2, seed=3)
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = keras.Model(model.inputs[0], model.get_layer("logits").output)(x)[:, 2]
    expected = (tape.gradient(score, x).numpy() * (images - 127.5)).sum(axis=-1)
    got = explain(model, images, "gradient_x_input", 2, normalize=False, baseline="grey")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert got.min() < 0 < got.max()
    normalized = explain(model, images, "gradient_x_input", 2, baseline="grey")
    np.testing.assert_allclose(normalized, np.abs(got) / np.abs(got).max(axis=(1, 2), keepdims=True), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# SmoothGrad
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_method", describe("smoothgrad")["params"]["base_method"]["choices"])
def test_smoothgrad_without_noise_is_its_base_method(base_method):
    model = small_cnn(seed=4)
    images = random_images(2, seed=4)
    for normalize in (False, True):
        expected = explain(model, images, base_method, [0, 1], normalize=normalize)
        got = explain(
            model,
            images,
            "smoothgrad",
            [0, 1],
            normalize=normalize,
            base_method=base_method,
            noise_level=0.0,
            samples=3,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_smoothgrad_is_the_mean_of_the_base_method_over_its_noisy_copies():
    model = small_cnn(seed=5)
    images = random_images(2, seed=5)
    samples, noise_level, seed = 4, 0.1, 3
    noise = np.stack(
        [tf.random.stateless_normal([16, 16, 3], seed=tf.constant([seed, s])).numpy() for s in range(samples)]
    )
    expected = np.mean(
        [
            explain(model, images + noise_level * 255.0 * noise[s], "vanilla_gradients", [1, 2], normalize=False)
            for s in range(samples)
        ],
        axis=0,
    )
    got = explain(
        model,
        images,
        "smoothgrad",
        [1, 2],
        normalize=False,
        samples=samples,
        noise_level=noise_level,
        seed=seed,
        batch_size=3,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Grad-CAM++ and Score-CAM
# ----------------------------------------------------------------------------------------------


def reference_gradcam_plus_plus(model, layer_name, images, classes):
    """The paper's eq. 19 written out in NumPy, with Y = exp(S): derivatives exp(S) g, exp(S) g^2, exp(S) g^3."""
    grad_model = keras.Model(model.inputs[0], [model.get_layer(layer_name).output, model.get_layer("logits").output])
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        activations, logits = grad_model(x)
        score = tf.gather(logits, classes, axis=1, batch_dims=1)
    g = tape.gradient(score, activations).numpy().astype(np.float64)
    a = activations.numpy().astype(np.float64)
    exp_score = np.exp(score.numpy().astype(np.float64))[:, None, None, None]
    first, second, third = exp_score * g, exp_score * g**2, exp_score * g**3
    denominator = 2 * second + a.sum(axis=(1, 2), keepdims=True) * third
    alphas = np.where(denominator != 0, second / np.where(denominator != 0, denominator, 1), 0)
    weights = (alphas * np.maximum(first, 0)).sum(axis=(1, 2))  # (N, K)
    cam = np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0)
    return upsample(cam, images.shape[1:3]), exp_score[:, 0, 0, 0]


def test_gradcam_plus_plus_matches_the_papers_closed_form():
    model = small_cnn(size=(16, 24), seed=6)
    images = random_images(3, (16, 24), seed=6)
    for layer_name, classes in (("conv2", [0, 1, 2]), ("conv1", [2, 2, 0])):
        expected, exp_score = reference_gradcam_plus_plus(model, layer_name, images, classes)
        assert np.count_nonzero(expected) > 10
        got = explain(model, images, "gradcam_plus_plus", classes, layer_name=layer_name)
        np.testing.assert_allclose(got, scale_by_max(expected), atol=1e-5)
        raw = explain(model, images, "gradcam_plus_plus", classes, normalize=False, layer_name=layer_name)
        # the raw map is the paper's map without its per-image factor exp(score)
        np.testing.assert_allclose(raw * exp_score[:, None, None], expected, rtol=1e-4, atol=1e-6 * expected.max())
    # it differs from Grad-CAM (the weighting is not the mean gradient)
    assert not np.allclose(
        explain(model, images, "gradcam", [0, 1, 2]), explain(model, images, "gradcam_plus_plus", [0, 1, 2]), atol=1e-3
    )


def reference_score_cam(model, layer_name, images, classes, max_channels=None):
    """Score-CAM one channel at a time: mask, score, subtract the black image's score; then the CAM."""
    activations = keras.Model(model.inputs[0], model.get_layer(layer_name).output)(images).numpy()
    height, width = images.shape[1:3]
    cams = []
    for image, maps, c in zip(images, activations, classes):
        black = float(model(np.zeros((1, height, width, 3), np.float32))[0, c])
        order = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")
        chosen = order if max_channels is None else order[:max_channels]
        weights = np.zeros(maps.shape[-1])
        for k in chosen:
            mask = upsample(maps[None, ..., k], (height, width))[0]
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else np.zeros_like(mask)
            weights[k] = float(model((image * mask[..., None])[None])[0, c]) - black
        cams.append(np.maximum((maps * weights).sum(axis=-1), 0))
    return upsample(np.stack(cams), (height, width))


@pytest.mark.parametrize("max_channels,batch_size", [(None, 64), (None, 5), (3, 2)])
def test_score_cam_matches_a_direct_loop_over_channels(max_channels, batch_size):
    model = small_cnn(size=(16, 20), seed=7)
    images = random_images(2, (16, 20), seed=7)
    classes = [1, 2]
    expected = reference_score_cam(model, "conv2", images, classes, max_channels)
    assert np.count_nonzero(expected) > 10
    raw = explain(
        model,
        images,
        "score_cam",
        classes,
        normalize=False,
        layer_name="conv2",
        max_channels=max_channels,
        batch_size=batch_size,
    )
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# LIME and RISE
# ----------------------------------------------------------------------------------------------


def two_halves(n, size=(32, 32), seed=0):
    """Images whose halves differ in colour (superpixels do not cross the midline)."""
    images = random_images(n, size, seed) * 0.3
    half = size[1] // 2
    images[:, :, :half, 0] += 170.0  # reddish left
    images[:, :, half:, 2] += 170.0  # bluish right
    return images


def test_lime_puts_its_positive_mass_on_the_half_the_model_looks_at():
    model = left_looking_model()
    images = two_halves(2, seed=8)
    raw = explain(model, images, "lime", 1, normalize=False, samples=300, segments=16, seed=0)
    positive = np.maximum(raw, 0)
    left = positive[:, :, :16].sum(axis=(1, 2)) / positive.sum(axis=(1, 2))
    assert left.min() >= 0.9, left


def test_rise_puts_its_mass_on_the_half_the_model_looks_at():
    # RISE's map is the class's expected probability when the pixel is kept: where the model does not look it
    # is the plain mean probability (about the map's mean), where it looks it is above. Its positive mass is
    # what lies above the map's mean.
    model = left_looking_model()
    images = two_halves(2, seed=9)
    raw = explain(model, images, "rise", 1, normalize=False, masks=600, cell_size=8, seed=0)
    assert raw.min() >= 0.0 and raw.max() <= 1.0 / 0.5  # probabilities over the keep probability
    above = np.maximum(raw - raw.mean(axis=(1, 2), keepdims=True), 0)
    left = above[:, :, :16].sum(axis=(1, 2)) / above.sum(axis=(1, 2))
    assert left.min() >= 0.9, left


def test_rise_is_the_probability_weighted_mean_of_its_masks():
    from core.explain.rise import masks_for, random_masks

    model = small_cnn(size=(12, 14), seed=10)
    images = random_images(2, (12, 14), seed=10)
    count, cell, keep = 20, 4, 0.5
    grids, shifts = random_masks(count, cell, keep, 5, 12, 14)
    masks = masks_for(tf.range(count), grids, shifts, cell, 12, 14).numpy()
    assert masks.shape == (count, 12, 14) and masks.min() >= 0.0 and masks.max() <= 1.0
    expected = []
    for image, c in zip(images, [0, 2]):
        probabilities = model(image[None] * masks[..., None]).numpy()[:, c]
        expected.append((probabilities[:, None, None] * masks).sum(axis=0) / (count * keep))
    got = explain(model, images, "rise", [0, 2], normalize=False, masks=count, cell_size=cell, seed=5, batch_size=7)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-7)


def test_lime_builds_the_same_neighbourhood_as_the_lime_package():
    from lime import lime_image

    from core.explain.lime import _lime_explainer_class, segment

    image = two_halves(1, (24, 24), seed=11)[0]
    segments = segment(image, 10)
    assert segments.min() == 0 and sorted(np.unique(segments)) == list(range(segments.max() + 1))
    fudged = image.copy()
    fudged[:] = 50.0

    def classifier(batch):  # a probability-like function of the pixels
        return np.stack([batch.mean(axis=(1, 2, 3)), batch[..., 0].std(axis=(1, 2))], axis=1)

    ours = _lime_explainer_class()(random_state=4).data_labels(image, fudged, segments, classifier, 37, batch_size=8)
    theirs = lime_image.LimeImageExplainer(random_state=4).data_labels(
        image, fudged, segments, classifier, 37, batch_size=8
    )
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Seeds, errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [m for m in METHODS if get_explainer(m).randomized])
def test_randomised_methods_are_reproducible_from_their_seed(method):
    model = small_cnn(seed=12)
    images = random_images(3, seed=12)
    params = dict(get_explainer(method).fast_params)
    first = explain(model, images, method, normalize=False, seed=1, **params)
    np.testing.assert_array_equal(explain(model, images, method, normalize=False, seed=1, **params), first)
    assert not np.allclose(explain(model, images, method, normalize=False, seed=2, **params), first)
    # an image explained alone gets the same map as in a batch (the random draws do not depend on the batch)
    alone = explain(model, images[1:2], method, normalize=False, seed=1, **params)
    np.testing.assert_allclose(alone[0], first[1], rtol=1e-4, atol=1e-6 * np.abs(first[1]).max())


@pytest.mark.parametrize(
    "method,params,fragments",
    [
        ("score_cam", {"max_channels": 0}, ["max_channels", "Received: max_channels=0"]),
        ("score_cam", {"layer_name": "gap"}, ["4-D", "Received: layer_name='gap'"]),
        ("gradcam_plus_plus", {"layer_name": "nope"}, ["gradcam_plus_plus", "Received: layer_name='nope'"]),
        ("smoothgrad", {"base_method": "smoothgrad"}, ["base_method one of", "Received: base_method='smoothgrad'"]),
        ("smoothgrad", {"noise_level": -0.1}, ["noise_level", "between 0.0 and 1.0", "Received: noise_level=-0.1"]),
        ("smoothgrad", {"samples": 0}, ["samples", "Received: samples=0"]),
        (
            "integrated_gradients",
            {"baseline": "white"},
            ["'black', 'grey', 'blur', 'noise'", "Received: baseline='white'"],
        ),
        ("integrated_gradients", {"steps": 0}, ["steps", "Received: steps=0"]),
        ("gradient_x_input", {"baseline": None}, ["baseline one of", "Received: baseline=None"]),
        ("lime", {"samples": 5}, ["samples", "between 10 and 20000", "Received: samples=5"]),
        ("lime", {"segments": 1.5}, ["segments", "Received: segments=1.5"]),
        ("rise", {"keep_probability": 0.0}, ["keep_probability", "Received: keep_probability=0.0"]),
        ("rise", {"cell_size": 17}, ["16x16 image", "Received: cell_size=17"]),
        ("rise", {"seed": -1}, ["seed", "Received: seed=-1"]),
    ],
)
def test_parameter_errors_say_what_was_expected_and_received(method, params, fragments):
    with pytest.raises(ExplanationError) as info:
        explain(small_cnn(seed=13), random_images(1), method, **params)
    assert str(info.value).startswith(f"{method}:")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_cam_methods_need_a_4d_layer_and_the_others_do_not():
    flat = keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Flatten(), layers.Dense(2, activation="softmax")], name="flat"
    )
    images = random_images(1, (8, 8))
    for method in METHODS:
        params = get_explainer(method).fast_params
        if "layer_name" in describe(method)["params"]:
            with pytest.raises(ExplanationError, match=rf"{method}: expected a model with a layer whose output is 4-D"):
                explain(flat, images, method, **params)
        else:
            assert explain(flat, images, method, **params).max() == pytest.approx(1.0)
