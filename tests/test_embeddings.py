"""The feature space (core.embeddings, core.penultimate, core.projection): where the features are read in
built, nested and imported models, known answers of the projections, the on-disk cache and its
invalidation, predictions that match the run's, clear errors, and ``python -m core embed``."""

from __future__ import annotations

import os

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers

from core import embeddings, penultimate, projection, runs
from core.finishing import SPLITS_FILE

TRAIN_SAMPLE = 5


def _images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def _features_of(model, images) -> tuple[np.ndarray, np.ndarray]:
    layer = penultimate.feature_layer(model)
    values, probabilities, _ = penultimate.feature_function(model, layer)(images)
    return values.numpy(), probabilities.numpy()


# ---- where the features are read ------------------------------------------------------------------


def test_built_model_reads_the_pooled_backbone_output():
    from core.models import build_model

    model = build_model("compact_cnn", 3, 32)
    layer = penultimate.feature_layer(model)
    assert layer.path == ("avg_pool",) and layer.dense == ("logits",)  # head_dropout is stepped over
    assert "input of the last Dense layer" in layer.description
    features, probabilities = _features_of(model, _images(4))
    assert features.shape == (4, model.get_layer("logits").input.shape[-1]) == (4, 64)
    np.testing.assert_allclose(probabilities, model(_images(4), training=False).numpy(), atol=1e-5)


def test_nested_backbone_and_hidden_dense_head():
    """A user model (nested in the imported wrapper) whose backbone is nested too; the penultimate layer is
    a hidden Dense of width 16, not the pooled backbone."""
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((32, 32, 3))
    backbone = keras.Model(inner_in, layers.Conv2D(6, 3, activation="relu", name="conv")(inner_in), name="backbone")
    pool, hidden, scores = layers.GlobalAveragePooling2D(), layers.Dense(16, activation="relu", name="hidden"), None
    user_in = keras.Input((32, 32, 3))
    scores = layers.Dense(3, activation="softmax", name="scores")
    user = keras.Model(user_in, scores(layers.Dropout(0.3)(hidden(pool(backbone(user_in))))), name="user")
    outer_in = keras.Input((32, 32, 3))
    model = keras.Model(outer_in, user(outer_in))
    layer = penultimate.feature_layer(model)
    assert layer.path == ("user", "hidden") and layer.dense == ("user", "scores")
    images = _images(3)
    features, probabilities = _features_of(model, images)
    expected = hidden(pool(backbone(images))).numpy()
    assert features.shape == (3, 16)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probabilities, model(images).numpy(), atol=1e-5)


def test_dense_first_in_a_nested_head_reads_what_feeds_the_head():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((32, 32, 3))
    pooled = layers.GlobalAveragePooling2D(name="gap")(layers.Conv2D(5, 3, name="conv")(inputs))
    head = keras.Sequential([layers.Dense(3, activation="softmax")], name="head")
    model = keras.Model(inputs, head(pooled))
    assert penultimate.feature_layer(model).path == ("gap",)
    assert _features_of(model, _images(2))[0].shape == (2, 5)


def test_a_conv_map_feeding_the_last_dense_is_average_pooled():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    conv = layers.Conv2D(8, 3, activation="relu", name="conv")
    per_position = layers.Dense(3, name="per_position")(conv(inputs))  # a Dense on a 4-D map
    model = keras.Model(inputs, layers.Softmax()(layers.GlobalAveragePooling2D()(per_position)))
    assert penultimate.feature_layer(model).path == ("conv",)
    images = _images(2)
    features, _ = _features_of(model, images)
    np.testing.assert_allclose(features, conv(images).numpy().mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_a_model_whose_layers_cannot_be_read_is_refused():
    class Opaque(keras.Model):
        def call(self, x):
            return keras.ops.softmax(keras.ops.mean(x, axis=(1, 2)))

    with pytest.raises(
        penultimate.FeatureError,
        match=r"^Cannot read the penultimate layer of this model \(Opaque\).*SavedModel is opaque",
    ):
        penultimate.feature_layer(Opaque())


# ---- projections ----------------------------------------------------------------------------------


def test_pca_of_points_on_a_line():
    rng = np.random.default_rng(0)
    t = rng.normal(size=40)
    direction = rng.normal(size=7)
    features = 3.0 + np.outer(t, direction)
    coords, ratio = projection.project_pca(features)
    np.testing.assert_allclose(coords[:, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(t - t.mean()) * np.linalg.norm(direction), rtol=1e-9)
    assert ratio == pytest.approx([1.0, 0.0], abs=1e-9)
    one_dimension, ratio = projection.project_pca(t[:, None])
    assert np.all(one_dimension[:, 1] == 0) and ratio[1] == 0.0


def test_tsne_clips_perplexity_and_is_seeded():
    features = np.random.default_rng(1).normal(size=(6, 80))  # more than 50 dimensions: PCA first
    coords, settings = projection.project_tsne(features, seed=3)
    assert coords.shape == (6, 2) and np.isfinite(coords).all()
    assert settings == {"perplexity": 5.0, "input_dimensions": 6, "init": "pca"}
    again, _ = projection.project_tsne(features, seed=3)
    np.testing.assert_array_equal(coords, again)


@pytest.mark.parametrize(
    "features, message",
    [
        (np.zeros((2, 4)), "at least 3 images"),
        (np.zeros(5), r"shape \(n, d\)"),
        (np.array([[0.0, np.nan]] * 4), "NaN or infinite"),
    ],
)
def test_projection_inputs_are_checked(features, message):
    for project in (projection.project_pca, projection.project_tsne):
        with pytest.raises(ValueError, match=message):
            project(features)
    with pytest.raises(ValueError, match="perplexity above 0"):
        projection.project_tsne(np.ones((4, 2)), perplexity=0)


# ---- a run: compute, cache, invalidate -----------------------------------------------------------


def test_a_run_computed_then_read_from_the_cache(copied_run):
    first = embeddings.compute_embeddings(copied_run, train_sample=TRAIN_SAMPLE)
    frame, info = first.frame, first.info
    assert list(frame.columns) == list(embeddings.FRAME_COLUMNS)
    test_count = len(runs.load_predictions(copied_run))
    assert (frame["split"] == "test").sum() == test_count and (frame["split"] == "train").sum() == TRAIN_SAMPLE
    assert first.features.shape == (len(frame), 64) == (len(frame), info["dimensions"])
    assert info["layer"] == "avg_pool" and info["cached"] is False and info["missing"] == 0
    assert set(info["timings"]) == {"model", "features", "pca", "tsne", "total"}
    assert all(path.is_file() for path in embeddings.cache_paths(copied_run))
    # the predictions are the run's own: same classes, same misclassified images
    predictions = runs.load_predictions(copied_run).set_index("path")
    test = frame[frame["split"] == "test"].set_index("path")
    assert list(test["pred_class"]) == list(predictions.loc[test.index, "pred_class"])
    assert list(test["correct"]) == list(predictions.loc[test.index, "correct"])
    np.testing.assert_allclose(test["confidence"], predictions.loc[test.index, "confidence"], atol=1e-5)
    assert list(frame["correct"]) == list(frame["true_class"] == frame["pred_class"])

    second = embeddings.compute_embeddings(copied_run, train_sample=TRAIN_SAMPLE)
    assert second.info["cached"] is True
    pd.testing.assert_frame_equal(second.frame, frame)
    np.testing.assert_array_equal(second.features, first.features)
    assert {k: v for k, v in second.info.items() if k not in ("cached", "seconds", "files")} == {
        k: v for k, v in info.items() if k not in ("cached", "seconds", "files")
    }
    assert embeddings.load_cached(copied_run, train_sample=TRAIN_SAMPLE + 1) is None  # other settings: not this one

    # a retrained or re-imported model (another modification time) makes the cache stale
    stat = copied_run.model_path.stat()
    os.utime(copied_run.model_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert embeddings.load_cached(copied_run, train_sample=TRAIN_SAMPLE) is None
    third = embeddings.compute_embeddings(copied_run, train_sample=TRAIN_SAMPLE)
    assert third.info["cached"] is False
    np.testing.assert_allclose(third.features, first.features, atol=1e-5)
    # a damaged cache file is never read as valid
    embeddings.cache_paths(copied_run)[1].write_text("path,split\nx,test\n")
    assert embeddings.load_cached(copied_run, train_sample=TRAIN_SAMPLE) is None


def _rewrite_splits(run, change) -> None:
    splits = pd.read_csv(run.file(SPLITS_FILE), dtype=str, keep_default_na=False)
    runs.atomic_write_csv(run.file(SPLITS_FILE), change(splits))


def test_missing_test_files_are_skipped_and_counted(copied_run, tmp_path):
    def move_two(splits):
        test = splits.index[splits["split"] == "test"][:2]
        splits.loc[test, "path"] = [str(tmp_path / f"gone_{i}.png") for i in range(2)]
        return splits

    _rewrite_splits(copied_run, move_two)
    result = embeddings.compute_embeddings(copied_run, train_sample=0)
    assert result.info["missing"] == 2 and len(result.info["missing_examples"]) == 2
    assert not result.frame["path"].str.contains("gone_").any()
    assert "2 missing" in embeddings.summary(result.info)


@pytest.mark.parametrize("case", ["no model", "no test split", "too few images", "negative sample"])
def test_bad_runs_give_clear_errors(copied_run, tmp_path, case):
    train_sample = 0
    if case == "no model":
        copied_run.model_path.unlink()
        message = f"Run {copied_run.id} has no model"
    elif case == "no test split":
        _rewrite_splits(copied_run, lambda s: s[s["split"] != "test"])
        message = "has no test split"
    elif case == "too few images":
        _rewrite_splits(copied_run, lambda s: s.assign(path=[str(tmp_path / f"gone_{i}.png") for i in range(len(s))]))
        message = r"expected at least 3 readable images to project. Received: 0 of \d+; \d+ no longer exist"
    else:
        train_sample = -1
        message = "Expected a train sample of 0 images or more"
    with pytest.raises(ValueError, match=message):
        embeddings.compute_embeddings(copied_run, train_sample=train_sample)


# ---- the command line -------------------------------------------------------------------------------


def test_embed_command(copied_run, capsys):
    from core.__main__ import main

    workspace = str(copied_run.path.parent.parent)
    assert main(["embed", copied_run.id, "--train-sample", "3", "--workspace", workspace]) == 0
    out = capsys.readouterr().out
    assert f"Run {copied_run.id}: " in out and "features from layer avg_pool (64 dimensions); computed in" in out
    assert str(embeddings.cache_paths(copied_run)[0]) in out
    assert main(["embed", copied_run.id, "--train-sample", "3", "--workspace", workspace]) == 0
    assert "read from cache" in capsys.readouterr().out
    assert main(["embed", "no-such-run", "--workspace", workspace]) == 2
    assert "error: No run named 'no-such-run'" in capsys.readouterr().err
