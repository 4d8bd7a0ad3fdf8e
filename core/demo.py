"""The built-in demo: a synthetic shapes dataset and a compact CNN trained on it, fully offline.

``create_demo_run`` is idempotent: it reuses a finished demo dataset and a complete demo run, and a
lock file keeps two processes (two browser tabs, say) from creating the demo at the same time.
"""

from __future__ import annotations

import os
from pathlib import Path

from core import runs, shapes

DEMO_NAME = "demo-shapes"
DEMO_DATASET = "demo_shapes"
DEMO_PER_CLASS = 500
DEMO_IMAGE_SIZE = 64
LOCK_FILE = ".demo.lock"
LOG_FILE = "demo.log"


def demo_dataset_dir(workspace) -> Path:
    return Path(workspace) / "datasets" / DEMO_DATASET


def ensure_demo_dataset(workspace, per_class: int = DEMO_PER_CLASS, seed: int = 0) -> Path:
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


def find_demo_run(workspace) -> runs.Run | None:
    return next((r for r in runs.list_runs(workspace) if r.meta.get("demo") and r.is_complete), None)


def _lock_owner(lock: Path) -> int:
    try:
        return int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def demo_in_progress(workspace) -> bool:
    """True while a live process holds the demo lock."""
    pid = _lock_owner(Path(workspace) / LOCK_FILE)
    return pid > 0 and runs.pid_alive(pid)


class _DemoLock:
    def __init__(self, workspace):
        self.path = Path(workspace) / LOCK_FILE

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_owner(self.path) == os.getpid():  # the page that started us wrote our pid already
                return self
            if demo_in_progress(self.path.parent):
                raise RuntimeError("The demo is already being created by another process.") from None
            self.path.unlink(missing_ok=True)  # stale lock from a process that died
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def create_demo_run(workspace, progress=None, epochs: int = 8, per_class: int = DEMO_PER_CLASS, seed: int = 0):
    """Creates (or reuses) the demo dataset and the demo run; returns the complete run."""
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


def start_demo_process(workspace):
    """Starts ``python -m core demo`` in its own process session (it survives page reloads) and writes
    its pid into the lock at once, so the page shows progress, not the button, from the next rerun."""
    from core import jobs

    process = jobs.start(["demo"], workspace, LOG_FILE)
    runs.atomic_write_text(Path(workspace) / LOCK_FILE, str(process.pid))
    return process


def demo_status(workspace) -> dict:
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


def read_log_tail(workspace, lines: int = 20) -> str:
    try:
        text = (Path(workspace) / "logs" / LOG_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
