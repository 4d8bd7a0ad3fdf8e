"""Training in a background process: completes on its own, can be cancelled, a crash is reported."""

from __future__ import annotations

import os
import signal
import time

import pytest

from core import jobs, runs
from core.shapes import generate_shapes_dataset
from core.training import TrainingConfig


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("jobs") / "shapes", per_class=10, image_size=24, seed=4)


def _wait(predicate, timeout=180.0, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _only_run(workspace):
    found = runs.list_runs(workspace)
    return found[0] if len(found) == 1 else None


def test_train_args_round_trip_every_option(tiny_data):
    config = TrainingConfig(
        arch="resnet50",
        image_size=96,
        epochs=3,
        batch_size=4,
        learning_rate=0.0005,
        weights="imagenet",
        augment=True,
        class_weights="always",
        fine_tune_epochs=2,
        group_split=True,
        seed=7,
    )
    args = jobs.train_args(tiny_data, config, name="x")
    from core.__main__ import build_parser

    parsed = build_parser().parse_args([*args, "--workspace", "/tmp/w"])
    assert (parsed.arch, parsed.img_size, parsed.epochs, parsed.batch_size, parsed.lr) == ("resnet50", 96, 3, 4, 0.0005)
    assert (parsed.weights, parsed.augment, parsed.class_weights, parsed.fine_tune_epochs) == (
        "imagenet",
        True,
        "always",
        2,
    )
    assert (parsed.group_split, parsed.seed, parsed.name) == (True, 7, "x")


def test_background_training_completes_and_reports_progress(tmp_path, tiny_data):
    config = TrainingConfig(arch="compact_cnn", image_size=24, epochs=2, batch_size=8, learning_rate=2e-3)
    job = jobs.start_training(tmp_path, tiny_data, config, name="bg")
    assert job.status == jobs.STARTING
    assert jobs.wait(job, timeout=240) == 0
    job = jobs.read_job(tmp_path, job.id)
    run = _only_run(tmp_path)
    assert job.status == jobs.COMPLETE and job.run_id == run.id
    assert job.record["test_accuracy"] == run.meta["test_accuracy"]
    assert run.is_complete and run.meta["epochs_trained"] == 2
    assert runs.read_progress(run)["epoch"] == 2
    assert jobs.progress_summary(run)["fraction"] == pytest.approx(1.0)
    assert jobs.job_progress(tmp_path, job)["fraction"] == pytest.approx(1.0)
    assert "epoch 2/2" in jobs.log_path(tmp_path, job.id).read_text()


def test_cancel_stops_a_run_and_leaves_earlier_runs_untouched(tmp_path, tiny_data):
    earlier = runs.create_run(tmp_path, "earlier", {"architecture": "x", "class_names": ["a", "b"]})
    earlier = runs.update_run(earlier, status=runs.COMPLETE, test_accuracy=0.5)
    before = (earlier.path / runs.RUN_FILE).read_bytes()
    config = TrainingConfig(arch="compact_cnn", image_size=24, epochs=200, batch_size=2, learning_rate=1e-3)
    job = jobs.start_training(tmp_path, tiny_data, config, name="long")
    live = _wait(
        lambda: next((r for r in jobs.active_runs(tmp_path) if runs.read_progress(r).get("stage") == "training"), None)
    )
    assert jobs.read_job(tmp_path, job.id).status == jobs.RUNNING
    jobs.cancel_job(tmp_path, jobs.read_job(tmp_path, job.id))
    assert jobs.wait(job, timeout=120) == 1  # the CLI exits 1 for a run that did not complete
    cancelled = runs.read_run(live.path)
    assert cancelled.status == runs.CANCELLED and cancelled.meta["error"] == "Cancelled by the user."
    assert not cancelled.model_path.exists()
    assert (earlier.path / runs.RUN_FILE).read_bytes() == before
    assert jobs.active_runs(tmp_path) == []
    job = jobs.read_job(tmp_path, job.id)
    assert job.status == jobs.CANCELLED and job.error == "Cancelled by the user."


def test_a_killed_training_process_shows_as_failed(tmp_path, tiny_data):
    config = TrainingConfig(arch="compact_cnn", image_size=24, epochs=200, batch_size=2)
    job = jobs.start_training(tmp_path, tiny_data, config)
    _wait(lambda: jobs.active_runs(tmp_path))
    os.kill(job.record["pid"], signal.SIGKILL)
    jobs.wait(job, timeout=30)
    (run,) = runs.list_runs(tmp_path)
    assert run.status == runs.FAILED and "stopped unexpectedly" in run.meta["error"]
    assert runs.read_run(run.path).status == runs.FAILED  # recorded in run.json
    assert jobs.active_runs(tmp_path) == []
    job = jobs.read_job(tmp_path, job.id)
    assert job.status == jobs.FAILED and "stopped unexpectedly" in job.error


def test_a_run_name_with_a_slash_gives_a_safe_log_name(tmp_path):
    process = jobs.start(["dataset", "--help"], tmp_path, "train-a/../b.log")
    assert process.wait(timeout=60) == 0
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["train-a-..-b.log"]
    assert "usage" in (tmp_path / "logs" / "train-a-..-b.log").read_text()
