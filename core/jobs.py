"""Background jobs: ``python -m core ...`` in its own process session, so that a page reload, a closed
tab or a second browser tab neither stops nor duplicates it. Progress is read from the run folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core import runs

if TYPE_CHECKING:  # core.training imports TensorFlow; this module must stay cheap (the Home page uses it)
    from core.training import TrainingConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent


_CHILDREN: list[subprocess.Popen] = []  # polled, so that ended children are reaped (no zombies)


def start(args: list[str], workspace, log_name: str) -> subprocess.Popen:
    """Starts ``python -m core <args> --workspace W`` detached, its output appended to ``W/logs/<log_name>``."""
    workspace = Path(workspace)
    (workspace / "logs").mkdir(parents=True, exist_ok=True)
    log_name = re.sub(r"[^A-Za-z0-9_.-]", "-", log_name).lstrip(".") or "job.log"
    _CHILDREN[:] = [child for child in _CHILDREN if child.poll() is None]
    with open(workspace / "logs" / log_name, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core", *args, "--workspace", str(workspace)],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _CHILDREN.append(process)
    return process


def train_args(data_dir, config: TrainingConfig, name: str | None = None) -> list[str]:
    """The ``python -m core train`` arguments for a configuration."""
    args = [
        "train",
        "--data",
        str(data_dir),
        "--arch",
        config.arch,
        "--weights",
        config.weights or "none",
        "--img-size",
        str(config.image_size),
        "--epochs",
        str(config.epochs),
        "--batch-size",
        str(config.batch_size),
        "--lr",
        repr(config.learning_rate),
        "--seed",
        str(config.seed),
        "--fine-tune-epochs",
        str(config.fine_tune_epochs),
        "--val-fraction",
        repr(config.val_fraction),
        "--test-fraction",
        repr(config.test_fraction),
    ]
    if config.augment:
        args.append("--augment")
    if config.class_weights:
        args += ["--class-weights", config.class_weights]
    if config.group_split:
        args.append("--group-split")
    if name:
        args += ["--name", name]
    return args


def start_training(workspace, data_dir, config: TrainingConfig, name: str | None = None) -> subprocess.Popen:
    config.validate()
    return start(train_args(data_dir, config, name), workspace, f"train-{name or config.arch}.log")


def cancel(run: runs.Run) -> None:
    """Asks a training run to stop after its current batch (it is then marked cancelled)."""
    run.file(runs.CANCEL_FILE).touch()


def active_runs(workspace) -> list[runs.Run]:
    """Runs still training in a live process."""
    _CHILDREN[:] = [child for child in _CHILDREN if child.poll() is None]
    return [r for r in runs.list_runs(workspace) if r.status == runs.RUNNING]


def progress_summary(run: runs.Run) -> dict:
    """Fraction done and a one-line message for a training run, from its progress.json."""
    progress = runs.read_progress(run)
    epochs = progress.get("epochs") or 1
    steps = progress.get("steps") or 1
    if not progress or progress.get("stage") != "training":
        return {"fraction": 0.0, "message": progress.get("message", "Loading images"), "epoch": 0, "epochs": epochs}
    done = (progress.get("epoch", 1) - 1 + progress.get("step", 0) / steps) / epochs
    message = f"Epoch {progress.get('epoch', 1)}/{epochs}, batch {progress.get('step', 0)}/{steps}"
    if "val_accuracy" in progress:
        message += f" · last validation accuracy {progress['val_accuracy']:.3f}"
    return {
        "fraction": max(0.0, min(1.0, done)),
        "message": message,
        "epoch": progress.get("epoch", 1),
        "epochs": epochs,
    }
