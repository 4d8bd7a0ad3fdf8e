"""`core.inside`: feature maps (known answers, ranking, nested and imported models, caching), tiles, and
class visualisation (score goes up, seeded, stoppable, regularisers)."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from core import inside
from core.explain import conv_layer_names

# Fixed 1x1 kernels: channel 0 = red, channel 1 = 2 x green, channel 2 = blue / 2, channel 3 = -red.
FIXED_KERNEL = np.array(
    [[1.0, 0.0, 0.0, -1.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]],
    np.float32,
).reshape(1, 1, 3, 4)


def _fixed_conv(name="conv"):
    conv = layers.Conv2D(4, 1, use_bias=False, name=name)
    return conv


def fixed_model(size=8):
    """pixels -> conv with FIXED_KERNEL (no bias, linear) -> GAP -> Dense(3) -> softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="pixels")
    conv = _fixed_conv()
    x = conv(inputs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, activation="softmax", name="logits")(x)
    model = keras.Model(inputs, outputs)
    conv.set_weights([FIXED_KERNEL])
    return model


def nested_fixed_model(size=8):
    """pixels -> backbone sub-model (inner conv with FIXED_KERNEL, relu) -> GAP -> Dense(3) -> softmax."""
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((size, size, 3), name="backbone_input")
    conv = _fixed_conv("inner_conv")
    inner = keras.Model(inner_in, layers.ReLU(name="inner_relu")(conv(inner_in)), name="backbone")
    inputs = keras.Input((size, size, 3), name="pixels")
    x = layers.GlobalAveragePooling2D(name="gap")(inner(inputs))
    model = keras.Model(inputs, layers.Dense(3, activation="softmax", name="logits")(x))
    conv.set_weights([FIXED_KERNEL])
    return model


def small_cnn(size=16, classes=3, seed=0):
    """A random small classifier: rescale -> conv(relu) -> conv(relu) -> GAP -> Dense -> softmax."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, layers.Activation("softmax", name="predictions")(x))


def patterned_image(size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)


# ---- feature maps ---------------------------------------------------------------------------------


def test_fixed_kernels_give_the_expected_activations_and_ranking():
    model = fixed_model()
    image = patterned_image()
    maps = inside.feature_maps(model, image, "conv")
    pixels = image.astype(np.float32)
    expected = np.stack([pixels[..., 0], 2 * pixels[..., 1], 0.5 * pixels[..., 2], -pixels[..., 0]], axis=-1)
    assert maps.activations.shape == (8, 8, 4)
    np.testing.assert_allclose(maps.activations, expected, rtol=1e-5, atol=1e-3)
    # Constant colours: means are exactly 10, 2 x 20, 30 / 2, -10 -> ranking 1, 2, 0, 3.
    flat = np.empty((8, 8, 3), np.uint8)
    flat[...] = (10, 20, 30)
    maps = inside.feature_maps(model, flat, "conv")
    assert maps.statistic == "mean" == inside.RANKING_STATISTIC
    assert maps.order.tolist() == [1, 2, 0, 3]
    np.testing.assert_allclose(maps.stats["mean"], [10, 40, 15, -10], rtol=1e-5)
    np.testing.assert_allclose(maps.stats["std"], 0, atol=1e-4)
    assert maps.stats["active"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert maps.probabilities.shape == (3,) and abs(float(maps.probabilities.sum()) - 1) < 1e-5


def test_a_layer_inside_a_nested_backbone():
    model = nested_fixed_model()
    assert conv_layer_names(model) == ["inner_conv", "inner_relu"]
    image = patterned_image(seed=3)
    pixels = image.astype(np.float32)
    maps = inside.feature_maps(model, image, "inner_relu")
    expected = np.maximum(
        np.stack([pixels[..., 0], 2 * pixels[..., 1], 0.5 * pixels[..., 2], -pixels[..., 0]], axis=-1), 0
    )
    np.testing.assert_allclose(maps.activations, expected, rtol=1e-5, atol=1e-3)
    assert maps.order[-1] == 3  # -red after ReLU: all zeros, ranked last
    assert maps.stats["max"][3] == 0.0


def test_one_compiled_function_per_model_and_layer_never_retraced():
    model = small_cnn()
    for seed in range(3):
        inside.feature_maps(model, patterned_image(16, seed), "conv1")
    inside.feature_maps(model, patterned_image(16, 9), "conv2")
    functions = inside.cached_functions(model)
    assert len(functions) == 2
    assert all(f.experimental_get_tracing_count() == 1 for f in functions.values())


def test_compiled_functions_do_not_keep_the_model_alive():
    model = small_cnn()
    inside.feature_maps(model, patterned_image(16), "conv1")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize(
    "layer_name, image, expected",
    [
        ("gap", patterned_image(16), "4-D output"),
        ("nope", patterned_image(16), "Received: layer_name='nope'"),
        ("conv1", patterned_image(8), "16x16 pixels"),
        ("conv1", np.full((16, 16, 3), 300.0), "[0, 255]"),
    ],
)
def test_feature_map_errors_say_what_was_expected(layer_name, image, expected):
    with pytest.raises(inside.InsideError, match=None) as info:
        inside.feature_maps(small_cnn(), image, layer_name)
    assert expected in str(info.value)


# ---- tiles ----------------------------------------------------------------------------------------


def test_normalized_tiles_min_max_each_channel():
    activations = np.zeros((2, 3, 3), np.float32)
    activations[..., 0] = [[1, 2, 3], [4, 5, 6]]
    activations[..., 1] = 7.0  # flat -> zeros
    activations[..., 2] = [[-2, 0, 0], [0, 0, 2]]
    tiles = inside.normalized_tiles(activations, [2, 0, 1])
    assert tiles.shape == (3, 2, 3) and tiles.dtype == np.float32
    np.testing.assert_allclose(tiles[0], [[0, 0.5, 0.5], [0.5, 0.5, 1]])
    np.testing.assert_allclose(tiles[1], np.array([[0, 1, 2], [3, 4, 5]]) / 5)
    assert not tiles[2].any()
    with pytest.raises(inside.InsideError, match=r"\[0, 2\]"):
        inside.normalized_tiles(activations, [3])


def test_tile_grid_layout():
    tiles = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 0.25, 0.5)])
    tiles[2, 0, 0] = 1.0
    grid, positions = inside.tile_grid(tiles, columns=2, padding=1, scale=2, pad_value=0.75)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (4 + 1) + 1)
    assert positions == [(0, 0), (0, 1), (1, 0)]
    np.testing.assert_array_equal(grid[1:5, 1:5], 0.0)
    np.testing.assert_array_equal(grid[1:5, 6:10], 0.25)
    np.testing.assert_array_equal(grid[6:8, 1:3], 1.0)  # the scaled 1.0 pixel: a 2x2 block
    np.testing.assert_array_equal(grid[8:10, 3:5], 0.5)
    np.testing.assert_array_equal(grid[6:10, 6:10], 0.75)  # the empty slot
    np.testing.assert_array_equal(grid[0], 0.75)
    default, _ = inside.tile_grid(np.zeros((5, 3, 3), np.float32))  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert default.shape == (2 * 4 + 1, 3 * 4 + 1)
    with pytest.raises(inside.InsideError, match=r"\[0, 1\]"):
        inside.tile_grid(np.full((1, 2, 2), 2.0))


# ---- class visualisation ---------------------------------------------------------------------------


def test_class_visualisation_raises_the_class_score_and_is_seeded():
    model = small_cnn()
    settings = inside.VisualizationSettings(class_index=1, steps=30, learning_rate=4.0, seed=7)
    first = inside.visualize(model, settings, class_names=["a", "b", "c"])
    assert first.image.shape == (16, 16, 3) and first.image.dtype == np.uint8
    assert first.steps_done == 30 and len(first.scores) == 30 and not first.stopped
    assert first.final_score > first.initial_score + 0.1
    assert first.scores[-5:].mean() > first.scores[:5].mean() + 0.1
    assert (np.diff(first.scores) > 0).mean() > 0.6  # climbs on most steps
    assert first.settings == settings.as_dict() and first.objective == "score of b (before softmax)"
    again = inside.visualize(model, settings)
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_array_equal(again.scores, first.scores)
    other = inside.visualize(model, inside.VisualizationSettings(class_index=1, steps=30, learning_rate=4.0, seed=8))
    assert not np.array_equal(other.image, first.image)


def test_channel_visualisation_raises_the_channel_mean_in_a_nested_backbone():
    model = nested_fixed_model(size=12)
    # Channel 1 is 2 x green after ReLU: ascent must push green up; channel 3 (-red) pushes red down.
    green = inside.visualize(
        model,
        inside.VisualizationSettings(target="channel", layer_name="inner_relu", channel=1, steps=10, blur_every=0),
    )
    assert green.final_score > green.initial_score + 20
    assert green.image[..., 1].mean() > green.image[..., 0].mean() + 20
    red = inside.visualize(
        model,
        inside.VisualizationSettings(target="channel", layer_name="inner_relu", channel=3, steps=10, noise=0),
    )
    assert red.objective == "mean activation of channel 3 of inner_relu"
    assert red.final_score == red.initial_score == 0  # -red <= 0 everywhere: ReLU gives no gradient


def test_stop_after_k_steps_returns_the_image_after_k_steps():
    model = small_cnn()
    seen = []
    result = inside.visualize(
        model,
        inside.VisualizationSettings(class_index=0, steps=50),
        progress=lambda step, score: seen.append((step, score)),
        should_stop=lambda: len(seen) >= 3,
    )
    assert result.stopped and result.steps_done == 3 and len(result.scores) == 3
    assert [step for step, _ in seen] == [1, 2, 3]
    assert [score for _, score in seen] == pytest.approx(result.scores.tolist())
    three = inside.visualize(model, inside.VisualizationSettings(class_index=0, steps=3))
    np.testing.assert_array_equal(three.image, result.image)


def test_one_compiled_step_reused_for_every_class_and_setting():
    model = small_cnn()
    for class_index, sigma in ((0, 0.5), (1, 1.5), (2, 0.0)):
        inside.visualize(model, inside.VisualizationSettings(class_index=class_index, steps=4, blur_sigma=sigma))
    step, objective = inside.ascent_functions(model, "class")
    assert step.experimental_get_tracing_count() == 1 and objective.experimental_get_tracing_count() == 1
    assert len(inside.cached_functions(model)) == 1


def _step(model, image, learning_rate=0.0, decay=0.0, blur=False, sigma=1.0, shift=(0, 0)):
    step, _ = inside.ascent_functions(model, "class")
    out, score = step(
        tf.constant(image[None].astype(np.float32)),
        tf.constant(shift, tf.int32),
        tf.constant(0),
        tf.constant(learning_rate, tf.float32),
        tf.constant(decay, tf.float32),
        tf.constant(blur),
        tf.constant(inside.gaussian_kernel(sigma)),
    )
    return out.numpy()[0]


def test_regularisers_keep_pixels_in_range_and_do_what_they_say():
    model = small_cnn()
    image = patterned_image(16).astype(np.float32)
    # Huge steps: pixels are clipped to 0-255, and clipping is reached.
    out = _step(model, image, learning_rate=255.0, shift=(3, -2))
    assert out.min() == 0.0 and out.max() == 255.0
    # No step, no decay, no blur: jitter alone leaves the image where it is.
    np.testing.assert_array_equal(_step(model, image, shift=(5, 5)), image)
    # Decay alone: half-way back to grey.
    np.testing.assert_allclose(_step(model, image, decay=0.5), inside.GREY + 0.5 * (image - inside.GREY), atol=1e-4)
    # Blur: keeps a flat image flat, smooths noise, keeps the mean.
    np.testing.assert_allclose(_step(model, np.full((16, 16, 3), 77.0), blur=True), 77.0, atol=1e-3)
    blurred = _step(model, image, blur=True)
    assert blurred.std() < 0.6 * image.std() and abs(blurred.mean() - image.mean()) < 3
    kernel = inside.gaussian_kernel(0.0)
    assert kernel.sum() == 1.0 and kernel[inside.BLUR_RADIUS] == 1.0
    # A whole run with every regulariser at its strongest stays 0-255.
    result = inside.visualize(
        model,
        inside.VisualizationSettings(class_index=1, steps=5, learning_rate=255.0, jitter=8, blur_every=1, decay=0.0),
    )
    assert result.image.min() >= 0 and result.image.max() <= 255 and result.image.std() > 10


@pytest.mark.parametrize(
    "settings, expected",
    [
        (inside.VisualizationSettings(class_index=3), "class_index an int between 0 and 2"),
        (inside.VisualizationSettings(steps=0), "steps an int between 1 and 100000"),
        (inside.VisualizationSettings(jitter=9), "jitter an int between 0 and 8"),
        (inside.VisualizationSettings(target="pixel"), "target one of"),
        (
            inside.VisualizationSettings(target="channel", layer_name="conv2", channel=8),
            "channel an int between 0 and 7",
        ),
        (inside.VisualizationSettings(target="channel", layer_name="gap", channel=0), "4-D output"),
        (inside.VisualizationSettings(learning_rate=float("nan")), "learning_rate a number"),
    ],
)
def test_bad_settings_are_refused_with_a_message(settings, expected):
    with pytest.raises(inside.InsideError) as info:
        inside.visualize(small_cnn(), settings)
    assert expected in str(info.value) and "Received" in str(info.value)


def test_visualisation_can_start_from_an_image():
    model = small_cnn()
    image = patterned_image(16, 4)
    result = inside.visualize(model, inside.VisualizationSettings(steps=1, learning_rate=0.0, decay=0.0), image=image)
    np.testing.assert_array_equal(result.image, image)  # no step size, no decay, blur only on step 4


# ---- an imported model with a nested backbone ------------------------------------------------------


@pytest.fixture(scope="module")
def imported_nested(tmp_path_factory):
    """A user model (nested backbone, logits head) saved as .keras, loaded safely and wrapped for pixels."""
    from core.model_import import load_user_model, wrap_for_pixels

    keras.utils.set_random_seed(2)
    inner_in = keras.Input((16, 16, 3), name="backbone_in")
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inner_in)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="deep")(x)
    backbone = keras.Model(inner_in, x, name="feature_extractor")
    inputs = keras.Input((16, 16, 3))
    outputs = layers.Dense(3, name="scores")(layers.GlobalAveragePooling2D()(backbone(inputs)))
    path = tmp_path_factory.mktemp("imported") / "user.keras"
    keras.Model(inputs, outputs, name="user_model").save(path)
    return wrap_for_pixels(load_user_model(path), "symmetric", 3)


def test_imported_nested_model_feature_maps_and_visualisation(imported_nested):
    model = imported_nested
    assert conv_layer_names(model) == ["stem", "deep"]
    maps = inside.feature_maps(model, patterned_image(16, 5), "deep")
    assert maps.activations.shape == (8, 8, 8) and maps.activations.min() >= 0
    means = maps.activations.mean(axis=(0, 1))
    assert np.all(np.diff(means[maps.order]) <= 1e-6)  # strongest first
    result = inside.visualize(model, inside.VisualizationSettings(class_index=1, steps=20, learning_rate=4.0))
    assert result.final_score > result.initial_score
    channel = inside.visualize(
        model, inside.VisualizationSettings(target="channel", layer_name="stem", channel=int(maps.order[0]), steps=10)
    )
    assert channel.final_score > channel.initial_score
