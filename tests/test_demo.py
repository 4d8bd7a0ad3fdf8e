"""The built-in demo: generated once, reused, locked against a second creator, and accurate enough."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from core import demo, runs


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


def test_demo_lock_refuses_a_second_creator(tmp_path):
    holder = subprocess.Popen(["sleep", "60"])  # another live process holds the lock
    try:
        (tmp_path / demo.LOCK_FILE).write_text(str(holder.pid))
        assert demo.demo_in_progress(tmp_path)
        with pytest.raises(RuntimeError, match="already being created"):
            demo.create_demo_run(tmp_path, per_class=6, epochs=1)
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / demo.LOCK_FILE).write_text("999999999")  # a dead process: the stale lock is taken over
    assert not demo.demo_in_progress(tmp_path)


def test_a_zombie_holder_counts_as_ended(tmp_path):
    """A child that ended but was not reaped yet must not keep the demo 'in progress' forever."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open(f"/proc/{child.pid}/stat").read().split(")")[-1].split()[0] != "Z":
        time.sleep(0.05)
    (tmp_path / demo.LOCK_FILE).write_text(str(child.pid))
    assert runs.pid_alive(os.getpid()) and not runs.pid_alive(child.pid)
    assert not demo.demo_in_progress(tmp_path)
    child.wait()


def test_the_page_writes_the_child_pid_into_the_lock(tmp_path):
    """The real `python -m core demo` child, stopped before it gets far: the lock names it at once."""
    process = demo.start_demo_process(tmp_path)
    try:
        assert (tmp_path / demo.LOCK_FILE).read_text() == str(process.pid)
        assert demo.demo_status(tmp_path)["in_progress"] is True  # the page shows progress, not the button
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not demo.demo_in_progress(tmp_path)


def test_demo_status_follows_the_run(tmp_path):
    assert demo.demo_status(tmp_path)["in_progress"] is False
    run = runs.create_run(tmp_path, "demo", {"demo": True})
    runs.write_progress(run, stage="training", epoch=3, epochs=4, step=5, steps=10, val_accuracy=0.75)
    status = demo.demo_status(tmp_path)
    assert status["fraction"] == pytest.approx((2 + 0.5) / 4)
    assert "Epoch 3/4" in status["message"] and "0.750" in status["message"]
