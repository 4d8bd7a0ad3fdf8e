"""core.runs: atomic writes, the run store (create, read, update, list), stale runs, file loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import runs
from core.runs import RunError


def leftovers(folder: Path) -> list[str]:
    names = (p.name for p in folder.iterdir() if p.name != runs.LOCK_FILE)
    return sorted(n for n in names if n.endswith(".tmp") or n.startswith("."))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_writes_round_trip_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "folder"
    runs.atomic_write_bytes(target / "a.bin", b"\x00\x01")
    runs.atomic_write_text(target / "b.txt", "héllo")
    runs.atomic_write_json(target / "c.json", {"b": 1, "a": [1.5, None], "p": Path("/x/y")})
    frame = pd.DataFrame({"x": [1, 2], "y": ["u", "v"]})
    runs.atomic_write_csv(target / "d.csv", frame)
    runs.atomic_write_text(target / "b.txt", "replaced")

    assert (target / "a.bin").read_bytes() == b"\x00\x01"
    assert (target / "b.txt").read_text("utf-8") == "replaced"
    assert json.loads((target / "c.json").read_text()) == {"a": [1.5, None], "b": 1, "p": "/x/y"}
    pd.testing.assert_frame_equal(pd.read_csv(target / "d.csv"), frame, check_dtype=False)
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.txt", "c.json", "d.csv"]


def test_atomic_write_json_stores_numpy_scalars(tmp_path):
    import numpy as np

    runs.atomic_write_json(tmp_path / "n.json", {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True)})
    assert json.loads((tmp_path / "n.json").read_text()) == {"i": 3, "f": 0.5, "b": True}


def test_atomic_write_json_stores_numpy_arrays(tmp_path):
    import numpy as np

    runs.atomic_write_json(tmp_path / "a.json", {"a": np.arange(3), "one": np.array([7])})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [0, 1, 2], "one": [7]}


def test_failing_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    runs.atomic_write_json(path, {"version": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="Cannot store object in JSON"):
        runs.atomic_write_json(path, {"version": 2, "bad": object()})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failing_byte_write_removes_its_temporary_file(tmp_path):
    path = tmp_path / "state.bin"
    runs.atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        runs.atomic_write_bytes(path, "not bytes")  # fails inside the write, after the temp file exists
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# Runs


def test_create_read_update_run(tmp_path):
    run = runs.create_run(tmp_path, "my model/v1", {"architecture": "compact_cnn", "class_names": ["a", "b"]})
    assert run.path.parent == tmp_path / "runs"
    assert "my-model-v1" in run.id  # unsafe characters replaced
    assert run.status == runs.RUNNING
    assert run.meta["pid"] > 0 and run.meta["created_at"]
    assert run.class_names == ["a", "b"]
    assert run.model_path == run.path / "model.keras"

    read = runs.read_run(run.path)
    assert read.meta == run.meta

    runs.update_run(run, test_accuracy=0.875)
    updated = runs.update_run(run, status=runs.COMPLETE)  # re-reads: the first update is kept
    assert updated.meta["test_accuracy"] == 0.875 and updated.is_complete
    assert runs.read_run(run.path).meta == updated.meta
    assert updated.label == f"{run.id} (compact_cnn, complete, test accuracy 0.875)"

    failed = runs.mark_stopped(updated, "boom")
    assert failed.status == runs.FAILED and failed.meta["error"] == "boom" and failed.meta["finished_at"]
    assert leftovers(run.path) == []


def test_run_without_status_counts_as_failed(tmp_path):
    assert runs.Run(tmp_path, {}).status == runs.FAILED
    assert not runs.Run(tmp_path, {}).is_complete


def test_read_run_errors(tmp_path):
    with pytest.raises(RunError, match="is not a run: it has no run.json"):
        runs.read_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="cannot be read"):
        runs.read_run(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="not a JSON object"):
        runs.read_run(tmp_path)


def _run_with(workspace, name, created_at, status=runs.COMPLETE, **extra) -> runs.Run:
    run = runs.create_run(workspace, name, {"architecture": "compact_cnn", "class_names": ["a", "b"]})
    return runs.update_run(run, created_at=created_at, status=status, **extra)


def test_list_runs_newest_first_skipping_unreadable_folders(tmp_path):
    assert runs.list_runs(tmp_path) == []  # no runs folder yet
    old = _run_with(tmp_path, "old", "2024-01-01T00:00:00+00:00")
    new = _run_with(tmp_path, "new", "2024-03-01T00:00:00+00:00")
    mid = _run_with(tmp_path, "mid", "2024-02-01T00:00:00+00:00")
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "run.json").write_text("{")
    (tmp_path / "runs" / "no-json").mkdir()
    (tmp_path / "runs" / ".hidden").mkdir()
    (tmp_path / "runs" / "a-file.txt").write_text("x")
    assert [r.id for r in runs.list_runs(tmp_path)] == [new.id, mid.id, old.id]


def test_list_runs_newest_first_within_one_second(tmp_path, monkeypatch):
    """Two runs created in the same second (a quick failure, then a retry) still list newest first."""

    ticks = iter(range(0, 1_000_000, 1000))

    class SameSecondClock(datetime):  # time moves on, by milliseconds, within one second
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 5, 1, 12, 0, 0, next(ticks), tzinfo=tz)

    monkeypatch.setattr(runs, "datetime", SameSecondClock)
    first = runs.create_run(tmp_path, "zz-first", {})
    second = runs.create_run(tmp_path, "aa-second", {})
    assert [r.id for r in runs.list_runs(tmp_path)] == [second.id, first.id]


def test_running_run_of_a_legacy_run_without_lock_falls_back_to_its_pid(tmp_path):
    alive = runs.create_run(tmp_path, "alive", {})  # this process holds its lock: still running
    crashed = runs.update_run(runs.create_run(tmp_path, "crashed", {}), pid=dead_pid())
    done = runs.create_run(tmp_path, "done", {"class_names": ["a", "b"]})
    done = runs.update_run(done, pid=dead_pid(), status=runs.COMPLETE)
    runs.locks.release(crashed.path / runs.LOCK_FILE)
    (crashed.path / runs.LOCK_FILE).unlink()  # a run made before locks existed
    listed = {r.id: r for r in runs.list_runs(tmp_path)}
    assert listed[alive.id].status == runs.RUNNING
    assert listed[crashed.id].status == runs.FAILED
    assert "stopped unexpectedly" in listed[crashed.id].meta["error"]
    assert listed[done.id].status == runs.COMPLETE
    assert runs.read_run(crashed.path).status == runs.FAILED  # recorded, not only reported


def test_latest_complete_run(tmp_path):
    assert runs.latest_complete_run(tmp_path) is None
    _run_with(tmp_path, "failed-newest", "2024-04-01T00:00:00+00:00", status=runs.FAILED)
    _run_with(tmp_path, "running", "2024-03-15T00:00:00+00:00", status=runs.RUNNING)
    wanted = _run_with(tmp_path, "complete-new", "2024-03-01T00:00:00+00:00")
    _run_with(tmp_path, "complete-old", "2024-01-01T00:00:00+00:00")
    assert runs.latest_complete_run(tmp_path).id == wanted.id


def test_find_run_by_id_or_folder_and_errors_list_known_runs(tmp_path):
    a = _run_with(tmp_path, "alpha", "2024-01-01T00:00:00+00:00")
    b = _run_with(tmp_path, "beta", "2024-02-01T00:00:00+00:00")
    assert runs.find_run(tmp_path, a.id).meta == a.meta
    assert runs.find_run(tmp_path / "elsewhere", str(b.path)).id == b.id  # a run folder path works anywhere
    with pytest.raises(RunError) as info:
        runs.find_run(tmp_path, "nope")
    message = str(info.value)
    assert "'nope'" in message and str(tmp_path / "runs") in message
    assert f"Known runs: {b.id}, {a.id}" in message
    with pytest.raises(RunError, match="Known runs: none"):
        runs.find_run(tmp_path / "empty", "nope")


def test_loaders_read_run_files_and_raise_on_missing_ones(tmp_path):
    run = runs.create_run(tmp_path, "files", {})
    for loader, name in (
        (runs.load_history, "history.csv"),
        (runs.load_predictions, "predictions.csv"),
        (runs.load_metrics, "metrics.json"),
    ):
        with pytest.raises(RunError, match=rf"Run {run.id} has no {name} \(status: running\)"):
            loader(run)
    runs.atomic_write_csv(run.file(runs.HISTORY_FILE), pd.DataFrame({"epoch": [1, 2], "loss": [0.9, 0.4]}))
    runs.atomic_write_csv(run.file(runs.PREDICTIONS_FILE), pd.DataFrame({"path": ["x.png"], "true_label": [0]}))
    runs.atomic_write_json(run.file(runs.METRICS_FILE), {"accuracy": 0.5})
    assert runs.load_history(run)["loss"].tolist() == [0.9, 0.4]
    assert runs.load_predictions(run)["path"].tolist() == ["x.png"]
    assert runs.load_metrics(run) == {"accuracy": 0.5}


def test_progress_round_trip(tmp_path):
    run = runs.create_run(tmp_path, "p", {})
    assert runs.read_progress(run) == {}
    runs.write_progress(run, epoch=2, step=3)
    progress = runs.read_progress(run)
    assert progress["epoch"] == 2 and progress["step"] == 3 and progress["updated_at"] > 0
    run.file(runs.PROGRESS_FILE).write_text("{half")
    assert runs.read_progress(run) == {}


def test_workspace_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XAI_WORKSPACE", raising=False)
    assert runs.workspace_dir() == tmp_path.resolve() / "workspace"
    monkeypatch.setenv("XAI_WORKSPACE", str(tmp_path / "from-env"))
    assert runs.workspace_dir() == tmp_path.resolve() / "from-env"
    assert runs.workspace_dir(tmp_path / "explicit") == tmp_path.resolve() / "explicit"
    monkeypatch.setenv("XAI_WORKSPACE", "relative-ws")
    assert runs.workspace_dir() == tmp_path.resolve() / "relative-ws"


def test_class_names_that_look_like_numbers_or_missing_values_stay_text(tmp_path):
    from core.evaluation import predictions_frame

    names = ["0", "1", "NA", "None"]
    run = runs.create_run(tmp_path, "text", {"class_names": names})
    frame = predictions_frame(["a.png", "b.png", "c.png", "d.png"], [0, 1, 2, 3], np.eye(4), names)
    runs.atomic_write_csv(run.file(runs.PREDICTIONS_FILE), frame)
    loaded = runs.load_predictions(run)
    assert loaded["true_class"].tolist() == names and loaded["pred_class"].tolist() == names
    assert (loaded["true_class"] == "0").sum() == 1
