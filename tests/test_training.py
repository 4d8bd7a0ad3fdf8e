"""core.training: a tiny real training run, its files, failures, cancellation and re-evaluation."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import data, runs, training
from core.models import ModelError, input_size, load_model, predict_proba
from core.training import TrainingConfig


def prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("prob_")]


def assert_no_partial_files(folder: Path) -> None:
    """No model, no temporary or hidden file (half-written model, checkpoint) in a run that did not finish."""
    names = [p.name for p in folder.iterdir() if p.name != runs.LOCK_FILE]
    assert runs.MODEL_FILE not in names
    assert not [n for n in names if n.startswith(".") or n.endswith((".keras", ".tmp", ".h5"))], names


# ---------------------------------------------------------------------------------------------------
# The tiny trained run (conftest: compact_cnn, 2 epochs, 32 px, batch 8, on 12 images per class)


def test_train_returns_a_complete_run_with_its_metadata(tiny_trained_run, tiny_shapes_dir):
    run = tiny_trained_run
    meta = runs.read_run(run.path).meta
    assert meta == run.meta
    assert run.is_complete and meta["status"] == "complete"
    assert meta["dataset"] == str(tiny_shapes_dir.resolve())
    assert meta["class_names"] == ["circle", "square", "triangle"]
    assert meta["architecture"] == "compact_cnn"
    assert meta["input_size"] == [32, 32]
    assert meta["preprocessing"] == "unit"
    expected_config = asdict(TrainingConfig(arch="compact_cnn", epochs=2, image_size=32, batch_size=8, seed=0))
    assert meta["hyperparameters"] == expected_config
    assert meta["seed"] == 0
    assert {"python", "keras", "numpy", "pandas", "scikit-learn", "pillow"} <= set(meta["library_versions"])
    assert {"tensorflow", "tensorflow-cpu"} & set(meta["library_versions"])
    assert meta["split_counts"] == {"train": 24, "val": 6, "test": 6}
    assert meta["epochs_trained"] == 2
    durations = meta["durations"]
    assert 0 < durations["train_seconds"] <= durations["total_seconds"]
    assert meta["finished_at"] >= meta["created_at"]
    assert "error" not in meta
    assert runs.latest_complete_run(run.path.parent.parent).id == run.id


def test_train_writes_history(tiny_trained_run):
    history = runs.load_history(tiny_trained_run)
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    assert history["epoch"].tolist() == [1, 2]
    assert np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    assert (history["loss"] > 0).all()
    assert history[["accuracy", "val_accuracy"]].apply(lambda s: s.between(0, 1)).all().all()


def test_train_writes_predictions_that_the_saved_model_reproduces(tiny_trained_run, tiny_shapes_dir):
    predictions = runs.load_predictions(tiny_trained_run)
    test_split = data.scan_dataset(tiny_shapes_dir, seed=0).split("test")
    assert predictions["path"].tolist() == test_split["path"].tolist()
    assert predictions["true_label"].tolist() == test_split["label"].tolist()
    assert prob_columns(predictions) == ["prob_circle", "prob_square", "prob_triangle"]
    probs = predictions[prob_columns(predictions)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert predictions["pred_label"].tolist() == probs.argmax(axis=1).tolist()

    model = load_model(tiny_trained_run.model_path)
    assert input_size(model) == (32, 32)
    again = predict_proba(model, data.load_images(test_split["path"].tolist(), (32, 32)))
    np.testing.assert_allclose(again, probs, atol=1e-5)


def test_train_writes_metrics(tiny_trained_run):
    metrics = runs.load_metrics(tiny_trained_run)
    predictions = runs.load_predictions(tiny_trained_run)
    assert metrics["accuracy"] == pytest.approx(predictions["correct"].mean())
    assert metrics["accuracy"] == tiny_trained_run.meta["test_accuracy"]
    assert metrics["n_samples"] == 6
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    for values in metrics["per_class"].values():
        assert set(values) == {"precision", "recall", "f1", "support", "roc_auc"}
        assert values["support"] == 2
        assert 0 <= values["roc_auc"] <= 1
    aucs = [v["roc_auc"] for v in metrics["per_class"].values()]
    assert metrics["roc_auc_macro"] == pytest.approx(np.mean(aucs))
    assert metrics["roc_auc_macro"] == tiny_trained_run.meta["roc_auc_macro"]


def test_train_leaves_only_finished_files(tiny_trained_run):
    names = sorted(p.name for p in tiny_trained_run.path.iterdir())
    assert names == sorted(
        [
            ".lock",
            "run.json",
            "model.keras",
            "history.csv",
            "predictions.csv",
            "metrics.json",
            "progress.json",
            "splits.csv",
            "val_predictions.csv",
            "drift.json",
            "drift.npz",
        ]
    )
    splits = pd.read_csv(tiny_trained_run.file(training.SPLITS_FILE))
    test_paths = splits.loc[splits["split"] == "test", "path"].tolist()
    assert test_paths == runs.load_predictions(tiny_trained_run)["path"].tolist()  # evaluated on the recorded split
    progress = runs.read_progress(tiny_trained_run)
    assert progress["epoch"] == 2 and progress["epochs"] == 2 and progress["step"] == progress["steps"] == 3


def test_evaluate_rewrites_predictions_and_metrics(copied_run):
    before = runs.load_metrics(copied_run)
    before_predictions = runs.load_predictions(copied_run)
    copied_run.file(runs.PREDICTIONS_FILE).unlink()
    copied_run.file(runs.METRICS_FILE).unlink()
    metrics = training.evaluate(copied_run)
    assert json.loads(json.dumps(metrics)) == runs.load_metrics(copied_run)
    assert metrics["accuracy"] == before["accuracy"]
    assert metrics["confusion_matrix"] == before["confusion_matrix"]
    after_predictions = runs.load_predictions(copied_run)
    assert after_predictions["path"].tolist() == before_predictions["path"].tolist()
    cols = prob_columns(before_predictions)
    np.testing.assert_allclose(after_predictions[cols].to_numpy(), before_predictions[cols].to_numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Failures and cancellation


@pytest.mark.parametrize(
    "config, message",
    [
        (TrainingConfig(arch="no_such_net", epochs=1, image_size=32), "Unknown architecture"),
        (
            TrainingConfig(arch="compact_cnn", weights="imagenet", image_size=32),
            "compact_cnn has no pre-trained weights",
        ),
    ],
)
def test_bad_configurations_are_refused_before_any_run_exists(tmp_path, tiny_shapes_dir, config, message):
    with pytest.raises(ValueError, match=message):
        training.train(tmp_path, tiny_shapes_dir, config)
    assert runs.list_runs(tmp_path) == []


def test_a_dataset_too_small_for_a_test_split_is_refused_up_front(tmp_path):
    from core.data import DatasetError
    from core.shapes import generate_shapes_dataset

    folder = tmp_path / "few"
    source = generate_shapes_dataset(tmp_path / "src", per_class=3, image_size=16, seed=0)
    for class_dir in (source / "train").iterdir():  # class layout, 2 images per class: 15% rounds to 0
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:2]:
            (folder / class_dir.name / image.name).write_bytes(image.read_bytes())
    with pytest.raises(DatasetError, match="test split .* would be empty"):
        training.train(tmp_path / "ws", folder, TrainingConfig(epochs=1, image_size=16))
    assert runs.list_runs(tmp_path / "ws") == []


def test_missing_pretrained_weights_fail_before_any_run_exists(tmp_path, tiny_shapes_dir, monkeypatch):
    from core.models import WeightsUnavailableError

    def offline(*args, **kwargs):
        raise WeightsUnavailableError("ImageNet weights for resnet50 could not be had (offline)")

    monkeypatch.setattr(training, "build_model", offline)
    config = TrainingConfig(arch="resnet50", weights="imagenet", epochs=1, image_size=32, batch_size=8)
    with pytest.raises(WeightsUnavailableError, match="could not be had"):
        training.train(tmp_path, tiny_shapes_dir, config)
    assert runs.list_runs(tmp_path) == [] and runs.unreadable_runs(tmp_path) == []


def test_a_failure_after_the_run_exists_marks_it_failed(tmp_path, tiny_shapes_dir, monkeypatch):
    """A failure inside training (here: loading the images) marks the run failed with a traceback."""

    def refuse(*args, **kwargs):
        raise ModelError("Unknown architecture for this test")

    monkeypatch.setattr(training, "make_inputs", refuse)
    with pytest.raises(ModelError, match="Unknown architecture"):
        training.train(tmp_path, tiny_shapes_dir, TrainingConfig(epochs=1, image_size=32, batch_size=8))
    (run,) = runs.list_runs(tmp_path)
    assert run.status == runs.FAILED
    assert run.meta["error"].startswith("ModelError: Unknown architecture")
    assert "Traceback" in run.meta["traceback"]
    assert run.meta["finished_at"]
    assert_no_partial_files(run.path)


@pytest.fixture(scope="module")
def failed_in_fit(tmp_path_factory, tiny_shapes_dir):
    """A run whose progress callback raises at the first step of epoch 2 (after epoch 1 completed)."""
    workspace = tmp_path_factory.mktemp("failed_in_fit")

    def progress(info):
        if info.get("stage") == "training" and info.get("epoch") == 2:
            raise RuntimeError("disk on fire")

    config = TrainingConfig(epochs=3, image_size=32, batch_size=8)
    with pytest.raises(RuntimeError, match="disk on fire"):
        training.train(workspace, tiny_shapes_dir, config, name="fails", progress=progress)
    (run,) = runs.list_runs(workspace)
    return run


def test_a_failure_during_fit_marks_the_run_failed(failed_in_fit):
    run = failed_in_fit
    assert run.status == runs.FAILED
    assert runs.read_run(run.path).status == runs.FAILED
    assert run.meta["error"] == "RuntimeError: disk on fire"
    assert "disk on fire" in run.meta["traceback"]
    assert run.meta["preprocessing"] == "unit"
    assert runs.MODEL_FILE not in [p.name for p in run.path.iterdir()]
    assert len(runs.load_history(run)) == 1  # epoch 1 finished and was recorded
    with pytest.raises(runs.RunError):
        runs.load_metrics(run)


def test_a_failed_run_leaves_no_partial_files(failed_in_fit):
    assert_no_partial_files(failed_in_fit.path)


@pytest.fixture(scope="module")
def cancelled(tmp_path_factory, tiny_shapes_dir):
    """A 3-epoch run whose progress callback creates the cancel file at its first step; and its events."""
    workspace = tmp_path_factory.mktemp("cancelled")
    events = []

    def progress(info):
        events.append(dict(info))
        if info.get("stage") == "training" and info.get("step") == 1:
            (run_path,) = runs.runs_dir(workspace).iterdir()
            (run_path / training.CANCEL_FILE).touch()

    config = TrainingConfig(epochs=3, image_size=32, batch_size=8)
    run = training.train(workspace, tiny_shapes_dir, config, name="cancel-me", progress=progress)
    return run, events


def test_cancel_file_stops_training(cancelled):
    run, events = cancelled
    assert run.status == runs.CANCELLED
    assert runs.read_run(run.path).status == runs.CANCELLED
    assert run.meta["error"] == "Cancelled by the user."
    assert runs.MODEL_FILE not in [p.name for p in run.path.iterdir()]
    assert len(runs.load_history(run)) == 1  # stopped in the first of 3 epochs
    assert [e["stage"] for e in events[:2]] == ["building", "loading"]
    assert not any(e["stage"] == "evaluating" for e in events)
    first = next(e for e in events if e["stage"] == "training")
    assert first["epoch"] == 1 and first["epochs"] == 3 and first["steps"] == 3 and first["loss"] > 0
    assert max(e.get("epoch", 0) for e in events) == 1


def test_a_cancelled_run_leaves_no_partial_files(cancelled):
    run, _ = cancelled
    assert_no_partial_files(run.path)


# ---------------------------------------------------------------------------------------------------
# Configuration and batches


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(epochs=0), "epochs must be at least 1. Received: epochs=0"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(learning_rate=0.0), "learning_rate must be between 0 and 1"),
        (dict(learning_rate=1.0), "learning_rate must be between 0 and 1"),
        (dict(image_size=8), "image_size must be between 16 and 1024 pixels. Received: image_size=8"),
        (dict(image_size=2048), "image_size must be between 16 and 1024"),
        (dict(fine_tune_epochs=-1), "fine_tune_epochs must be 0 or more"),
        (
            dict(class_weights="balanced"),
            "class_weights must be 'always', 'none' or None .* Received: class_weights='balanced'",
        ),
        (dict(seed=-5), "seed must be 0 or more. Received: seed=-5"),
        (dict(val_fraction=0.6, test_fraction=0.5), "val_fraction \\+ test_fraction must be below 1"),
    ],
)
def test_training_config_validate(changes, message, tmp_path, tiny_shapes_dir):
    config = TrainingConfig(**changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        training.train(tmp_path, tiny_shapes_dir, config)
    assert runs.list_runs(tmp_path) == []  # refused before any run is created


def test_class_weights_for():
    balanced = [0, 0, 1, 1, 2, 2]
    assert training.class_weights_for(balanced, 3, None) is None
    assert training.class_weights_for(balanced, 3, "always") == {0: 1.0, 1: 1.0, 2: 1.0}
    assert training.class_weights_for(balanced, 3, "auto") == {0: 1.0, 1: 1.0, 2: 1.0}  # the old name
    assert TrainingConfig(class_weights="auto").class_weights == "always"
    skewed = [0] * 6 + [1] * 2  # 3:1, above the threshold: n / (k * n_c)
    assert training.class_weights_for(skewed, 2, None) == pytest.approx({0: 8 / 12, 1: 8 / 4})
    assert training.class_weights_for(skewed, 2, "none") is None
    assert training.class_weights_for([0, 0, 0], 2, "always") is None  # a class without images: no weights


def test_training_config_defaults_are_valid():
    TrainingConfig().validate()
    TrainingConfig(image_size=16, epochs=1, batch_size=1, learning_rate=0.5).validate()


def test_training_batches(tmp_path):
    """The tf.data pipeline training uses (`core.pipeline.training_dataset`): batches, shuffling, augmentation."""
    from PIL import Image

    from core import pipeline

    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        image = np.zeros((6, 8, 3), np.uint8)
        image[:, :4] = 50 * i  # left half coloured: a flip moves it
        Image.fromarray(image).save(path)
        paths.append(str(path))
    routes = pipeline.plan_routes(paths)
    batches = list(pipeline.training_dataset(paths, [0, 1, 2, 0, 1], (6, 8), batch_size=2, routes=routes))
    assert len(batches) == 3
    images, labels = (t.numpy() for t in batches[2])
    assert images.shape == (1, 6, 8, 3) and images.dtype == np.float32
    assert labels.tolist() == [1] and images[0, 0, 0, 0] == 200.0
    np.testing.assert_array_equal(batches[0][0].numpy()[:, 0, 0, 0], [0.0, 50.0])

    shuffled = pipeline.training_dataset(paths, [0, 1, 2, 3, 4], (6, 8), batch_size=5, shuffle=True, seed=3)
    images, labels = (t.numpy() for t in next(iter(shuffled)))
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(images[:, 0, 0, 0], labels * 50.0)  # images stay with their labels
    orders = [tuple(int(y) for y in batch.numpy()) for _, batch in shuffled.repeat(3)]
    assert any(order != (0, 1, 2, 3, 4) for order in orders)  # shuffled, not in list order
    assert len(set(orders)) > 1  # and again in another order each pass

    augmented = pipeline.training_dataset(paths, [0, 1, 2, 3, 4], (6, 8), batch_size=5, augment=True, seed=0)
    images, labels = (t.numpy() for t in next(iter(augmented)))
    assert images.shape == (5, 6, 8, 3) and images.dtype == np.float32
    assert labels.tolist() == [0, 1, 2, 3, 4]
    assert images.min() >= 0 and images.max() <= 255
    originals = np.stack([np.asarray(Image.open(path), np.float32) for path in paths])
    assert any(not np.array_equal(images[i], originals[i]) for i in range(1, 5))  # augmentation changes images
    for i in range(1, 5):  # each image keeps its own colour (it stays with its label)
        assert 0 < images[i].max() <= originals[i].max() + 1e-3


def test_a_cancel_during_image_loading_stops_before_the_first_epoch(tmp_path, tiny_shapes_dir):
    def cancel_while_loading(info):
        if info.get("stage") == "loading":
            (run,) = runs.list_runs(tmp_path)
            run.file(training.CANCEL_FILE).touch()

    run = training.train(
        tmp_path, tiny_shapes_dir, TrainingConfig(epochs=3, image_size=32, batch_size=8), progress=cancel_while_loading
    )
    assert run.status == runs.CANCELLED
    assert not run.file(runs.HISTORY_FILE).exists() and not run.model_path.exists()
