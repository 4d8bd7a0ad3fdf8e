"""Training jobs started from the page: one job per request, one log per job, every outcome recorded
(failures before a run folder exists included), cancel before the run exists, the CLI's checks."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image

from core import jobs, runs
from core.training import TrainingConfig


@pytest.fixture
def one_class_folder(tmp_path):
    """A folder the scan refuses (one class): the job fails before any run exists."""
    (tmp_path / "data" / "only").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / "only" / f"{i}.png")
    return tmp_path / "data"


def _until_done(workspace, job, timeout=180.0) -> jobs.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = jobs.read_job(workspace, job.id)
        if not current.is_active:
            return current
        time.sleep(0.3)
    raise AssertionError(f"job {job.id} still {current.status}")


def test_one_request_starts_one_job_and_a_failure_before_the_run_is_recorded(tmp_path, one_class_folder):
    workspace = tmp_path / "ws"
    config = TrainingConfig(arch="compact_cnn", image_size=16, epochs=1, batch_size=4)
    request = jobs.new_request_id()
    first = jobs.start_training(workspace, one_class_folder, config, name="x", request_id=request)
    again = jobs.start_training(workspace, one_class_folder, config, name="x", request_id=request)  # double click
    assert again.id == first.id and again.record["pid"] == first.record["pid"]
    assert [p.name for p in jobs.jobs_dir(workspace).glob("*.json")] == [f"{request}.json"]
    jobs.wait(first, timeout=180)
    done = _until_done(workspace, first)
    assert done.status == jobs.FAILED
    assert "A classifier needs at least two classes" in done.error and done.run_id is None
    assert runs.list_runs(workspace) == [] and runs.unreadable_runs(workspace) == []
    assert [p.name for p in (workspace / "logs").iterdir()] == [f"train-{request}.log"]  # one log per job
    assert "needs at least two classes" in jobs.read_log_tail(workspace, first.id)
    assert [j.id for j in jobs.list_jobs(workspace)] == [first.id]


def test_two_requests_get_two_jobs_and_two_logs(tmp_path, one_class_folder):
    config = TrainingConfig(arch="compact_cnn", image_size=16, epochs=1, batch_size=4)
    a = jobs.start_training(tmp_path, one_class_folder, config, name="same-name")
    b = jobs.start_training(tmp_path, one_class_folder, config, name="same-name")
    assert a.id != b.id
    for job in (a, b):
        jobs.wait(job, timeout=180)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(f"train-{j.id}.log" for j in (a, b))
    assert {j.status for j in jobs.list_jobs(tmp_path)} == {jobs.FAILED}


def test_cancel_before_the_run_exists(tmp_path):
    from core.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path / "shapes", per_class=8, image_size=16, seed=2)
    config = TrainingConfig(arch="compact_cnn", image_size=16, epochs=50, batch_size=2)
    job = jobs.start_training(tmp_path / "ws", data, config)
    jobs.cancel_job(tmp_path / "ws", job)  # at once: the child has not even imported TensorFlow
    assert jobs.wait(job, timeout=180) == 1
    done = _until_done(tmp_path / "ws", job)
    assert done.status == jobs.CANCELLED and "Cancelled by the user" in done.error
    assert all(r.status == runs.CANCELLED for r in runs.list_runs(tmp_path / "ws"))


def test_a_job_whose_process_vanished_without_a_word_is_failed_with_its_log(tmp_path):
    folder = jobs.jobs_dir(tmp_path)
    folder.mkdir(parents=True)
    record = {"id": "abcd1234", "status": "running", "created_at": runs.utc_now()}
    (folder / "abcd1234.json").write_text(json.dumps(record))  # nobody holds its lock
    (tmp_path / "logs").mkdir()
    jobs.log_path(tmp_path, "abcd1234").write_text("Loading 30 images\nKilled\n")
    job = jobs.read_job(tmp_path, "abcd1234")
    assert job.status == jobs.FAILED and "stopped unexpectedly" in job.error and "Killed" in job.error
    assert json.loads((folder / "abcd1234.json").read_text())["status"] == jobs.FAILED  # recorded


def test_job_ids_are_checked(tmp_path):
    with pytest.raises(jobs.JobError, match="A job id is"):
        jobs.read_job(tmp_path, "../../etc/passwd")
    with pytest.raises(jobs.JobError, match="No job"):
        jobs.read_job(tmp_path, "abcd1234")


def test_a_workspace_that_is_a_file_cannot_hold_jobs(tmp_path, one_class_folder):
    workspace = tmp_path / "file"
    workspace.write_text("x")
    with pytest.raises(jobs.JobError, match="is a file, not a folder"):
        jobs.start_training(workspace, one_class_folder, TrainingConfig(image_size=16))
