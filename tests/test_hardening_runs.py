"""One bad file never takes down the workspace; a killed process leaves no lie and no debris.

run.json is checked against a schema on every read; exact liveness by a lock the training process holds
for its lifetime (a real subprocess killed with SIGKILL); leftovers of a killed save removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from core import locks, runs
from core.runs import RunError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _complete(workspace, name, **extra) -> runs.Run:
    run = runs.create_run(workspace, name, {"architecture": "compact_cnn", "class_names": ["a", "b"]})
    return runs.update_run(run, status=runs.COMPLETE, test_accuracy=0.5, **extra)


def _edit(run: runs.Run, **fields) -> None:
    meta = json.loads(run.file(runs.RUN_FILE).read_text())
    for key, value in fields.items():
        if value is ...:
            meta.pop(key, None)
        else:
            meta[key] = value
    run.file(runs.RUN_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"created_at": 12345}, "created_at must be text, not int 12345"),
        ({"status": 3}, "status must be text"),
        ({"status": "exploded"}, "status must be one of"),
        ({"class_names": "a,b"}, "class_names must be a list"),
        ({"class_names": ["a", 2]}, "class_names must be a list of non-empty texts"),
        ({"class_names": ["a", "a"]}, "class_names repeats a name"),
        ({"class_names": ...}, "class_names is missing"),
        ({"input_size": [32]}, "input_size must be [height, width]"),
        ({"input_size": "32x32"}, "input_size must be a list"),
        ({"test_accuracy": "high"}, "test_accuracy must be an integer or a number or null"),
        ({"durations": {"total_seconds": "long"}}, "durations must map names to seconds"),
        ({"created_at": ...}, "created_at is missing"),
    ],
)
def test_an_invalid_run_json_is_listed_as_unreadable_and_the_others_still_work(tmp_path, fields, reason):
    good = _complete(tmp_path, "good")
    bad = _complete(tmp_path, "bad")
    _edit(bad, **fields)
    assert [r.id for r in runs.list_runs(tmp_path)] == [good.id]
    ((path, message),) = runs.unreadable_runs(tmp_path)
    assert path == bad.path
    assert reason in message and bad.id in message
    assert runs.latest_complete_run(tmp_path).id == good.id
    with pytest.raises(RunError, match="is not valid"):
        runs.find_run(tmp_path, bad.id)


def test_unreadable_runs_names_every_kind_of_damage(tmp_path):
    _complete(tmp_path, "fine")
    root = runs.runs_dir(tmp_path)
    (root / "no-json").mkdir()
    (root / "half").mkdir()
    (root / "half" / runs.RUN_FILE).write_text('{"status": "comp')
    (root / "list").mkdir()
    (root / "list" / runs.RUN_FILE).write_text("[1]")
    (root / ".creating-x").mkdir()  # a run being created: hidden, not unreadable
    found = {path.name: reason for path, reason in runs.unreadable_runs(tmp_path)}
    assert set(found) == {"no-json", "half", "list"}
    assert "has no run.json" in found["no-json"]
    assert "cannot be read" in found["half"]
    assert "not a JSON object" in found["list"]
    assert len(runs.list_runs(tmp_path)) == 1


def test_cli_on_an_invalid_run_is_a_clean_error(tmp_path, capsys):
    from core.__main__ import main

    bad = _complete(tmp_path, "bad")
    _edit(bad, created_at=12345)
    code = main(["evaluate", bad.id, "--workspace", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: The run.json of") and "created_at must be text" in err
    assert "Traceback" not in err


def test_a_runs_folder_that_is_a_file_is_a_clean_error(tmp_path):
    (tmp_path / "runs").write_text("oops")
    assert runs.list_runs(tmp_path) == []
    with pytest.raises(RunError, match="is a file, not a folder"):
        runs.create_run(tmp_path, "x", {})


# ---------------------------------------------------------------------------------------------------
# Exact liveness: a real process, killed with SIGKILL in the middle of saving its model

HOLDER = textwrap.dedent(
    """
    import sys, time
    from core import runs
    run = runs.create_run(sys.argv[1], "victim", {"class_names": ["a", "b"]})
    (run.path / ".tmp-model-123.keras").write_bytes(b"")            # a save cut short
    (run.path / ".best.weights.h5").write_bytes(b"x" * 1000)       # the best epoch's checkpoint
    (run.path / ".run.json.abc.tmp").write_bytes(b"{")             # an atomic write cut short
    print(run.path, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def killed_run(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        path = process.stdout.readline().strip()
        run = runs.read_run(path)
        assert runs.is_alive(run)  # the child holds the lock
        assert [r.status for r in runs.list_runs(tmp_path)] == [runs.RUNNING]
        assert runs.read_run(path).status == runs.RUNNING  # a live run is left alone
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
    return tmp_path, run


def test_a_killed_process_is_recorded_as_failed_on_the_next_read(killed_run):
    workspace, run = killed_run
    assert not runs.is_alive(run)
    (listed,) = runs.list_runs(workspace)
    assert listed.status == runs.FAILED and listed.meta["error"] == runs.CRASHED_MESSAGE
    on_disk = runs.read_run(run.path)
    assert on_disk.status == runs.FAILED and on_disk.meta["finished_at"]  # written, not only shown
    assert runs.list_runs(workspace)[0].meta == on_disk.meta  # recorded once, then read as it is


def test_a_killed_save_leaves_no_leftovers_and_no_model(killed_run):
    workspace, run = killed_run
    runs.list_runs(workspace)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == [runs.LOCK_FILE, runs.RUN_FILE]
    assert not runs.read_run(run.path).model_path.exists()


def test_a_reused_pid_does_not_make_a_dead_run_look_alive(killed_run):
    workspace, run = killed_run
    _edit(run, pid=os.getpid())  # the recorded pid now belongs to a live process: this one
    assert not runs.is_alive(runs.read_run(run.path))
    assert runs.list_runs(workspace)[0].status == runs.FAILED


def test_leftovers_of_a_live_run_are_left_alone(tmp_path):
    run = runs.create_run(tmp_path, "live", {})
    (run.path / ".best.weights.h5").write_bytes(b"x")
    assert runs.list_runs(tmp_path)[0].status == runs.RUNNING
    assert (run.path / ".best.weights.h5").exists()
    runs.mark_stopped(run, "done")
    assert not locks.held_here(run.path / runs.LOCK_FILE)  # the lock goes with the running status


def test_clean_leftovers_removes_only_leftovers(tmp_path):
    for name in (".tmp-model-1.keras", ".best.weights.h5", ".metrics.json.x.tmp", "model.keras", "run.json", ".lock"):
        (tmp_path / name).write_bytes(b"")
    removed = runs.clean_leftovers(tmp_path)
    assert removed == [".best.weights.h5", ".metrics.json.x.tmp", ".tmp-model-1.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "model.keras", "run.json"]


def test_lock_primitives(tmp_path):
    lock = tmp_path / "x.lock"
    assert not locks.is_held(lock)  # no file: nobody
    assert locks.acquire(lock) and locks.acquire(lock)  # idempotent in one process
    assert locks.is_held(lock) and locks.held_here(lock)
    code = f"from core import locks; print(locks.is_held({str(lock)!r}), locks.acquire({str(lock)!r}))"
    other = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert other.stdout.split() == ["True", "False"]  # another process sees it held and cannot take it
    locks.release(lock)
    assert not locks.is_held(lock)


def test_damaged_run_files_raise_run_errors_naming_the_file(tmp_path):
    run = runs.create_run(tmp_path, "damaged", {"class_names": ["a", "b"]})
    run.file(runs.HISTORY_FILE).write_text("loss\n0.5\n")  # no epoch column
    run.file(runs.METRICS_FILE).write_text("[1, 2]")
    run.file(runs.PREDICTIONS_FILE).write_bytes(b"")
    with pytest.raises(RunError, match=f"The history.csv of run {run.id} cannot be read"):
        runs.load_history(run)
    with pytest.raises(RunError, match="metrics.json of run .* is not a JSON object"):
        runs.load_metrics(run)
    with pytest.raises(RunError, match="The predictions.csv of run .* cannot be read"):
        runs.load_predictions(run)
    run.file(runs.HISTORY_FILE).write_text("epoch,loss\n1.0,0.5\n2.0,0.4\n")
    assert runs.load_history(run)["epoch"].tolist() == [1, 2]  # whole epochs, as integers


def test_a_damaged_progress_file_reads_as_unknown_progress(tmp_path):
    from core import jobs

    run = runs.create_run(tmp_path, "p", {})
    runs.write_progress(run, stage="training", epoch="two", epochs=3, step=1, steps=4)
    summary = jobs.progress_summary(run)
    assert summary["fraction"] == 0.0 and "damaged" in summary["message"]
