"""The built-in demo: a synthetic shapes dataset and a compact CNN trained on it, fully offline.

``create_demo_run`` is idempotent: it reuses a finished demo dataset and a complete demo run, and a
lock (``flock`` on ``.demo.lock``, held by the creating process for its lifetime) keeps two processes
(two browser tabs, say) from creating the demo at the same time. The page takes the lock and hands it
to the ``python -m core demo`` child, so "in progress" is exact from the first rerun on.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from core import locks, runs, shapes

DEMO_NAME = "demo-shapes"
DEMO_DATASET = "demo_shapes"
DEMO_PER_CLASS = 500
DEMO_IMAGE_SIZE = 64
LOCK_FILE = ".demo.lock"
LOG_FILE = "demo.log"


class WorkspaceError(ValueError):
    """The workspace path cannot hold runs (a file, say); the message says what to do."""


def check_workspace(workspace: str | os.PathLike) -> Path:
    """The workspace as a usable folder (created if missing).

    Raises:
        WorkspaceError: the path is a file, or the folder cannot be created or written.
    """
    workspace = Path(workspace)
    if workspace.exists() and not workspace.is_dir():
        raise WorkspaceError(
            f"The workspace {workspace} is a file, not a folder. Set XAI_WORKSPACE (or --workspace) to a folder."
        )
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(f"The workspace folder {workspace} cannot be created: {exc}") from exc
    if not os.access(workspace, os.W_OK):
        raise WorkspaceError(f"The workspace folder {workspace} is not writable.")
    return workspace


def demo_dataset_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "datasets" / DEMO_DATASET


def ensure_demo_dataset(workspace: str | os.PathLike, per_class: int = DEMO_PER_CLASS, seed: int = 0) -> Path:
    """Generates the demo dataset once; a ``dataset.json`` written last marks it as finished."""
    root = demo_dataset_dir(workspace)
    marker = root / "dataset.json"
    if marker.exists():
        return root
    shapes.generate_shapes_dataset(root, per_class=per_class, image_size=DEMO_IMAGE_SIZE, seed=seed)
    runs.atomic_write_json(
        marker,
        {
            "name": DEMO_DATASET,
            "classes": list(shapes.DEMO_CLASSES),
            "per_class": per_class,
            "image_size": DEMO_IMAGE_SIZE,
            "seed": seed,
            "masks": "masks/<split>/<class>/<file>: 255 on the object, 0 elsewhere",
        },
    )
    return root


def find_demo_run(workspace: str | os.PathLike) -> runs.Run | None:
    return next((r for r in runs.list_runs(workspace) if r.meta.get("demo") and r.is_complete), None)


def demo_in_progress(workspace: str | os.PathLike) -> bool:
    """True while a live process holds the demo lock (exact: the lock ends with its process)."""
    return locks.is_held(Path(workspace) / LOCK_FILE)


class _DemoLock:
    """Held for the demo's creation: taken here, or already handed over by the page that started us."""

    def __init__(self, workspace):
        self.path = Path(workspace) / LOCK_FILE
        self.taken = False

    def __enter__(self):
        from core.jobs import holds_handed_lock

        if holds_handed_lock(self.path):
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not locks.acquire(self.path):
            raise RuntimeError("The demo is already being created by another process.")
        self.taken = True
        return self

    def __exit__(self, *exc):
        if self.taken:
            locks.release(self.path)


def create_demo_run(
    workspace: str | os.PathLike,
    progress: Callable[[dict], None] | None = None,
    epochs: int = 8,
    per_class: int = DEMO_PER_CLASS,
    seed: int = 0,
) -> runs.Run:
    """Creates (or reuses) the demo dataset and the demo run; returns the complete run.

    Raises:
        WorkspaceError: the workspace cannot hold runs. RuntimeError: another process is creating it.
    """
    check_workspace(workspace)
    existing = find_demo_run(workspace)
    if existing is not None:
        return existing
    from core.training import TrainingConfig, train

    with _DemoLock(workspace):
        if progress:
            progress({"stage": "dataset", "message": "Generating the synthetic shapes dataset"})
        dataset = ensure_demo_dataset(workspace, per_class=per_class, seed=seed)
        config = TrainingConfig(
            arch="compact_cnn", image_size=DEMO_IMAGE_SIZE, epochs=epochs, batch_size=16, learning_rate=2e-3, seed=seed
        )
        return train(workspace, dataset, config, name=DEMO_NAME, progress=progress, extra_meta={"demo": True})


def start_demo_process(workspace: str | os.PathLike) -> subprocess.Popen:
    """Starts ``python -m core demo`` in its own process session (it survives page reloads), handing it
    the demo lock, so the page shows progress, not the button, from the next rerun.

    Raises:
        WorkspaceError: the workspace cannot hold runs. JobError: the demo is being created already.
    """
    from core import jobs

    workspace = check_workspace(workspace)
    return jobs.start(["demo"], workspace, LOG_FILE, lock_path=workspace / LOCK_FILE)


def demo_status(workspace: str | os.PathLike) -> dict:
    """What the Home page shows while the demo is created: stage, epoch, fraction done, last error."""
    workspace = Path(workspace)
    demo_runs = [r for r in runs.list_runs(workspace) if r.meta.get("demo")]
    status = {"in_progress": demo_in_progress(workspace), "fraction": 0.0, "message": "Starting"}
    if not demo_runs:
        if status["in_progress"]:
            status["message"] = "Generating the synthetic shapes dataset"
        return status
    latest = demo_runs[0]
    status["run_status"] = latest.status
    status["error"] = latest.meta.get("error")
    from core.jobs import progress_summary

    status.update({k: v for k, v in progress_summary(latest).items() if k in ("fraction", "message")})
    return status


def read_log_tail(workspace: str | os.PathLike, lines: int = 20) -> str:
    try:
        text = (Path(workspace) / "logs" / LOG_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
