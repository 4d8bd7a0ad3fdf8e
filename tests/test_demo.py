"""The built-in demo: generated once, reused, locked against a second creator, and accurate enough."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import demo, runs

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_full_demo_reaches_the_accuracy_target(tmp_path):
    """The demo as a newcomer gets it (1,500 images, 8 epochs). Its time is printed, not asserted."""
    started = time.monotonic()
    run = demo.create_demo_run(tmp_path)
    seconds = time.monotonic() - started
    print(f"\nfull demo: {seconds:.1f} s, test accuracy {run.meta['test_accuracy']:.4f}")
    assert run.is_complete and run.meta["demo"] is True
    assert run.meta["test_accuracy"] >= 0.95
    assert runs.load_metrics(run)["n_samples"] == 3 * 75
    # Ground-truth masks lie beside the dataset, one per image, and cover the drawn shape.
    root = demo.demo_dataset_dir(tmp_path)
    images = sorted((root / "test").rglob("*.png"))
    masks = sorted((root / "masks" / "test").rglob("*.png"))
    assert len(images) == len(masks) == 225
    mask = np.asarray(Image.open(masks[0])) > 0
    assert 0.05 < mask.mean() < 0.6
    # A second call reuses the run and the dataset instead of training again.
    again_started = time.monotonic()
    assert demo.create_demo_run(tmp_path).id == run.id
    assert time.monotonic() - again_started < 5
    assert len(runs.list_runs(tmp_path)) == 1


HOLD_LOCK = (
    "import sys, time; from core import locks; assert locks.acquire(sys.argv[1]); print('held', flush=True); "
    "time.sleep(60)"
)


def _holder(lock_path) -> subprocess.Popen:
    """Another live process holding the demo lock (flock)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_demo_lock_refuses_a_second_creator(tmp_path):
    holder = _holder(tmp_path / demo.LOCK_FILE)
    try:
        assert demo.demo_in_progress(tmp_path)
        with pytest.raises(RuntimeError, match="already being created"):
            demo.create_demo_run(tmp_path, per_class=6, epochs=1)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not demo.demo_in_progress(tmp_path)  # the lock ended with its process: taken over next time


def test_a_reused_pid_in_the_lock_file_does_not_fake_progress(tmp_path):
    (tmp_path / demo.LOCK_FILE).write_text(str(os.getpid()))  # a live pid, but nobody holds the lock
    assert not demo.demo_in_progress(tmp_path)


def test_a_holder_that_ended_but_was_not_reaped_counts_as_ended(tmp_path):
    """A child that ended (a zombie until reaped) must not keep the demo 'in progress' forever."""
    holder = _holder(tmp_path / demo.LOCK_FILE)
    holder.stdout.close()
    os.kill(holder.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open(f"/proc/{holder.pid}/stat").read().split(")")[-1].split()[0] != "Z":
        time.sleep(0.05)
    assert not demo.demo_in_progress(tmp_path)
    holder.wait()


def test_the_page_hands_the_lock_to_the_child(tmp_path):
    """The real `python -m core demo` child, stopped before it gets far: it holds the lock at once."""
    process = demo.start_demo_process(tmp_path)
    try:
        assert demo.demo_in_progress(tmp_path)
        assert demo.demo_status(tmp_path)["in_progress"] is True  # the page shows progress, not the button
        from core.jobs import JobError

        with pytest.raises(JobError, match="already doing this"):  # a second tab cannot start a second demo
            demo.start_demo_process(tmp_path)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not demo.demo_in_progress(tmp_path)


def test_a_workspace_that_is_a_file_is_a_clean_error(tmp_path):
    workspace = tmp_path / "ws"
    workspace.write_text("not a folder")
    with pytest.raises(demo.WorkspaceError, match="is a file, not a folder"):
        demo.start_demo_process(workspace)
    with pytest.raises(demo.WorkspaceError, match="is a file, not a folder"):
        demo.create_demo_run(workspace)
    assert demo.demo_status(workspace)["in_progress"] is False


def test_demo_status_follows_the_run(tmp_path):
    assert demo.demo_status(tmp_path)["in_progress"] is False
    run = runs.create_run(tmp_path, "demo", {"demo": True})
    runs.write_progress(run, stage="training", epoch=3, epochs=4, step=5, steps=10, val_accuracy=0.75)
    status = demo.demo_status(tmp_path)
    assert status["fraction"] == pytest.approx((2 + 0.5) / 4)
    assert "Epoch 3/4" in status["message"] and "0.750" in status["message"]


def test_the_child_knows_the_lock_it_was_handed(tmp_path, monkeypatch):
    """What `python -m core demo` sees when the page handed it the lock: it may go on (and nobody else)."""
    from core import jobs, locks

    lock = tmp_path / demo.LOCK_FILE
    fd = locks.hand_over(lock)
    monkeypatch.setenv(jobs.HELD_LOCK_ENV, f"{lock.absolute()}:{fd}")
    assert jobs.holds_handed_lock(lock)
    with demo._DemoLock(tmp_path):  # does not refuse: the lock is ours
        assert demo.demo_in_progress(tmp_path)
    monkeypatch.setenv(jobs.HELD_LOCK_ENV, f"{lock.absolute()}:999")  # a descriptor that is not the lock
    assert not jobs.holds_handed_lock(lock)
    locks.forget(lock)
    assert not demo.demo_in_progress(tmp_path)
