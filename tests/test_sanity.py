"""core.sanity: the randomisation cascade on a copy (edge detector fails, vanilla gradients pass), the run's
model unchanged bit for bit, and the random-other-class check."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def run_model_and_images(tiny_trained_run):
    from core.data import load_images
    from core.finishing import test_split_of
    from core.model_import import load_run_model

    model = load_run_model(tiny_trained_run.path)
    test = test_split_of(tiny_trained_run)
    return model, load_images(list(test["path"][:4]), (32, 32))


def test_cascade_edge_detector_fails_vanilla_gradients_pass_model_unchanged(run_model_and_images):
    from core.sanity import edge_detector, layer_units, randomization_cascade

    model, images = run_model_and_images
    before_weights = [w.copy() for w in model.get_weights()]
    before = np.asarray(model(images, training=False))

    edges = randomization_cascade(model, images, edge_detector)
    assert edges["passed"] is False and "fails" in edges["verdict"]
    assert all(stage["mean_spearman"] == pytest.approx(1.0) for stage in edges["stages"])

    gradients = randomization_cascade(model, images, "vanilla_gradients", seed=3)
    assert gradients["passed"] is True and "passes" in gradients["verdict"]
    assert gradients["final_spearman"] < 0.5
    units = layer_units(model)
    assert [s["top_layer"] for s in gradients["stages"]] == ["original"] + [unit[0].name for unit in units]
    assert gradients["stages"][1]["randomized_layers"] == ["logits"]
    assert gradients["stages"][-1]["randomized_layers"][-2:] == ["block1_conv", "block1_bn"]
    assert gradients["maps"].shape == (len(units) + 1, 4, 32, 32)
    assert gradients["stages"][0]["mean_spearman"] == pytest.approx(1.0)
    assert gradients["maps"].min() >= 0.0 and gradients["maps"].max() <= 1.0

    after = np.asarray(model(images, training=False))
    assert np.array_equal(before, after)  # bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(before_weights, model.get_weights()))


def test_cascade_is_seeded_and_stages_are_bounded(run_model_and_images):
    from core.sanity import randomization_cascade, stage_cuts

    model, images = run_model_and_images
    first = randomization_cascade(model, images[:2], "vanilla_gradients", seed=5, max_stages=2)
    second = randomization_cascade(model, images[:2], "vanilla_gradients", seed=5, max_stages=2)
    assert len(first["stages"]) == 3
    np.testing.assert_array_equal(first["maps"], second["maps"])
    assert stage_cuts(5, 6) == [1, 2, 3, 4, 5]
    assert stage_cuts(100, 4) == [1, 34, 67, 100]


def test_class_sensitivity(run_model_and_images):
    from core.sanity import class_sensitivity, edge_detector

    model, images = run_model_and_images
    edges = class_sensitivity(model, images, edge_detector)
    assert edges["class_sensitive"] is False and edges["mean_spearman"] == pytest.approx(1.0)
    assert all(o != c for o, c in zip(edges["other_classes"], edges["classes"]))

    def by_class(model, images, class_index):  # a double whose map is a different half per class
        maps = np.zeros((len(images), 32, 32), np.float32)
        for i, c in enumerate(class_index):
            maps[i, :, c * 10 : c * 10 + 12] = 1.0 + np.arange(12) / 12
        return maps

    halves = class_sensitivity(model, images, by_class, seed=1)
    assert halves["class_sensitive"] is True and halves["mean_spearman"] < 0.5
    assert "is class-sensitive" in halves["verdict"]


def test_copy_is_separate(run_model_and_images):
    from core.sanity import model_copy, reinitialise

    model, images = run_model_and_images
    copy = model_copy(model)
    np.testing.assert_array_equal(np.asarray(copy(images)), np.asarray(model(images)))
    reinitialise(copy.get_layer("logits"), seed=0)
    assert not np.array_equal(copy.get_layer("logits").get_weights()[0], model.get_layer("logits").get_weights()[0])


def test_a_model_that_cannot_be_cloned_gets_a_clear_error():
    import keras

    from core.sanity import SanityError, model_copy

    class Opaque(keras.Model):  # subclassed: clone_model cannot rebuild it
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, activation="softmax")

        def call(self, x):
            return self.dense(keras.ops.mean(x, axis=(1, 2)))

    model = Opaque()
    model(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(SanityError, match="cloned"):
        model_copy(model)
