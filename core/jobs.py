"""Background jobs: ``python -m core ...`` in its own process session, so that a page reload, a closed
tab or a second browser tab neither stops nor duplicates it.

A training job has a record, ``<workspace>/jobs/<job id>.json``, that carries its state between the
page and the process:

    starting -> running -> complete | failed | cancelled

The page claims the record (created exclusively: one job per request id, so a rerun or a double click
never starts a second one), takes the job's lock and hands it to the child process, which holds it
for its lifetime: a job whose record still says starting/running while nobody holds its lock died, and
is recorded as failed on the next read. The child records its run id, then its outcome (test accuracy,
or the error, including errors before a run folder exists: bad weights, scan errors). Each job writes
its own log, ``<workspace>/logs/train-<job id>.log``. This module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import locks, runs

if TYPE_CHECKING:  # core.training imports TensorFlow; this module must stay cheap (the Home page uses it)
    from core.training import TrainingConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = "jobs"
STARTING, RUNNING = "starting", "running"
COMPLETE, FAILED, CANCELLED = runs.COMPLETE, runs.FAILED, runs.CANCELLED
ACTIVE = (STARTING, RUNNING)
HELD_LOCK_ENV = "XAI_HELD_LOCK"  # "<path>:<fd>": a lock the parent handed to this process
NEVER_STARTED_SECONDS = 60.0  # an empty record this old: the page died while claiming it
_ID = re.compile(r"[A-Za-z0-9_-]{4,64}")

_CHILDREN: dict[int, subprocess.Popen] = {}  # polled, so that ended children are reaped (no zombies)


class JobError(ValueError):
    """A job cannot be started or found; the message says why."""


class JobCancelled(Exception):
    """The job was cancelled before its training began."""


def _reap() -> None:
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def _safe_log_name(log_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", log_name).lstrip(".") or "job.log"


def start(
    args: list[str], workspace: str | os.PathLike, log_name: str, lock_path: str | os.PathLike | None = None
) -> subprocess.Popen:
    """Starts ``python -m core <args> --workspace W`` detached, its output appended to ``W/logs/<log_name>``.

    With ``lock_path``, the lock is taken here and handed to the child, which holds it until it exits
    (`locks.is_held(lock_path)` is then exactly "the child is alive").

    Raises:
        JobError: the workspace is not a folder, or ``lock_path`` is held by another live process.
    """
    workspace = Path(workspace)
    if workspace.exists() and not workspace.is_dir():
        raise JobError(f"The workspace {workspace} is a file, not a folder. Set XAI_WORKSPACE to a folder.")
    try:
        (workspace / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"Cannot create the workspace's logs folder in {workspace}: {exc}") from exc
    _reap()
    env = dict(os.environ)
    fds: tuple[int, ...] = ()
    if lock_path is not None:
        try:
            fd = locks.hand_over(lock_path)
        except BlockingIOError as exc:
            raise JobError(f"Another process is already doing this (it holds {lock_path}).") from exc
        fds = (fd,)
        env[HELD_LOCK_ENV] = f"{Path(lock_path).absolute()}:{fd}"
    try:
        with open(workspace / "logs" / _safe_log_name(log_name), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "core", *args, "--workspace", str(workspace)],
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=fds,
                env=env,
            )
    finally:
        if lock_path is not None:
            locks.forget(lock_path)  # the child holds it now (or nobody, if it did not start)
    _CHILDREN[process.pid] = process
    return process


def holds_handed_lock(lock_path: str | os.PathLike) -> bool:
    """True in a child that its parent handed the lock at ``lock_path`` (see `start`)."""
    handed = os.environ.get(HELD_LOCK_ENV, "")
    path, _, fd = handed.rpartition(":")
    if not path or path != str(Path(lock_path).absolute()) or not fd.isdigit():
        return False
    try:
        return os.fstat(int(fd)).st_ino == os.stat(lock_path).st_ino
    except OSError:
        return False


def train_args(data_dir: str | os.PathLike, config: TrainingConfig, name: str | None = None) -> list[str]:
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
    if config.strategy != "auto":
        args += ["--strategy", config.strategy]
    if config.mixed_precision:
        args.append("--mixed-precision")
    if config.lr_rule != "none":
        args += ["--lr-rule", config.lr_rule]
    if config.cache:
        args.append("--cache")
    if name:
        args += ["--name", name]
    return args


# ---------------------------------------------------------------------------------------------------
# Job records


@dataclass(frozen=True)
class Job:
    """A job record as read (with its status resolved: a dead job is failed, never running)."""

    id: str
    record: dict

    @property
    def status(self) -> str:
        return self.record.get("status", STARTING)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def run_id(self) -> str | None:
        return self.record.get("run_id")

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def title(self) -> str:
        """``<name> (<arch>) · job <id>``, the architecture left out when it is the name."""
        arch = self.record.get("arch") or "training"
        name = self.record.get("name") or arch
        return f"{name}{f' ({arch})' if name != arch else ''} · job {self.id[:8]}"


def jobs_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / JOBS_DIR


def new_request_id() -> str:
    """A fresh id for one form submission (the job's id)."""
    return secrets.token_hex(8)


def _check_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
        raise JobError(f"A job id is 4-64 letters, digits, '-' or '_'. Received: {job_id!r}")
    return job_id


def _record_path(workspace, job_id: str) -> Path:
    return jobs_dir(workspace) / f"{_check_id(job_id)}.json"


def _lock_path(workspace, job_id: str) -> Path:
    return jobs_dir(workspace) / f"{_check_id(job_id)}.lock"


def _cancel_path(workspace, job_id: str) -> Path:
    return jobs_dir(workspace) / f"{_check_id(job_id)}.cancel"


def log_path(workspace: str | os.PathLike, job_id: str) -> Path:
    """The job's own log file."""
    return Path(workspace) / "logs" / f"train-{_check_id(job_id)}.log"


def _read_record(path: Path) -> dict | None:
    """The record, or None while it is being claimed (empty or half-written)."""
    try:
        record = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def update_job(workspace: str | os.PathLike, job_id: str, **fields: Any) -> dict:
    """Merges ``fields`` into the job's record (atomically) and returns it."""
    path = _record_path(workspace, job_id)
    record = _read_record(path) or {"id": job_id}
    record.update(fields, updated_at=runs.utc_now())
    runs.atomic_write_json(path, record)
    return record


def start_training(
    workspace: str | os.PathLike,
    data_dir: str | os.PathLike,
    config: TrainingConfig,
    name: str | None = None,
    request_id: str | None = None,
    extra_args: Sequence[str] = (),
) -> Job:
    """Starts a training job for one request (a form submission); idempotent per ``request_id``.

    A second call with the same request id (a rerun, a double click) starts nothing and returns the
    job the first call started. ``extra_args`` go to ``python -m core train`` as they are (``--mlflow``,
    say).

    Raises:
        ValueError: a bad configuration. JobError: the workspace cannot hold jobs, or the process
            could not be started (the job is then recorded as failed).
    """
    config.validate()
    job_id = _check_id(request_id or new_request_id())
    folder = jobs_dir(workspace)
    if Path(workspace).exists() and not Path(workspace).is_dir():
        raise JobError(f"The workspace {workspace} is a file, not a folder. Set XAI_WORKSPACE to a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    path = _record_path(workspace, job_id)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # the claim: one job per request
    except FileExistsError:
        return read_job(workspace, job_id)
    lock = _lock_path(workspace, job_id)
    locks.acquire(lock)  # held here until the child holds it: never a moment where a live job looks dead
    record = {
        "id": job_id,
        "kind": "train",
        "status": STARTING,
        "created_at": runs.utc_now(),
        "name": name,
        "arch": config.arch,
        "dataset": str(data_dir),
        "log": log_path(workspace, job_id).name,
    }
    runs.atomic_write_json(path, record)
    try:  # start() hands the lock this process holds over to the child
        process = start(
            [*train_args(data_dir, config, name), *extra_args, "--job", job_id],
            workspace,
            log_path(workspace, job_id).name,
            lock,
        )
    except BaseException as exc:
        update_job(workspace, job_id, status=FAILED, error=f"The training process could not be started: {exc}")
        raise JobError(f"The training process could not be started: {exc}") from exc
    return Job(job_id, update_job(workspace, job_id, pid=process.pid))


def read_job(workspace: str | os.PathLike, job_id: str) -> Job:
    """One job, its status resolved: a job whose process is gone is recorded as failed now.

    Raises:
        JobError: no such job.
    """
    path = _record_path(workspace, job_id)
    try:
        record = _read_record(path)
    except FileNotFoundError as exc:
        raise JobError(f"No job {job_id!r} in {jobs_dir(workspace)}") from exc
    if record is None:  # being claimed right now, or the page died while claiming it
        age = time.time() - path.stat().st_mtime if path.exists() else 0.0
        if age < NEVER_STARTED_SECONDS:
            return Job(job_id, {"id": job_id, "status": STARTING})
        record = update_job(workspace, job_id, status=FAILED, error="The job was never started.")
        return Job(job_id, record)
    if record.get("status", STARTING) in ACTIVE and not locks.is_held(_lock_path(workspace, job_id)):
        record = _record_death(workspace, job_id, record)
    return Job(job_id, record)


def _record_death(workspace, job_id: str, record: dict) -> dict:
    """The outcome of a job whose process ended without recording one: its run's, or a crash."""
    run_id = record.get("run_id")
    fields: dict[str, Any] = {"status": FAILED, "finished_at": runs.utc_now()}
    if run_id:
        try:
            run = runs.find_run(workspace, run_id)  # records the run's own failure when it was left running
            fields.update(status=run.status, error=run.meta.get("error"), test_accuracy=run.meta.get("test_accuracy"))
        except runs.RunError as exc:
            fields["error"] = str(exc)
    if fields["status"] == FAILED and not fields.get("error"):
        tail = read_log_tail(workspace, job_id, lines=1)
        fields["error"] = runs.CRASHED_MESSAGE + (f" Last log line: {tail}" if tail else "")
    return update_job(workspace, job_id, **fields)


def list_jobs(workspace: str | os.PathLike, limit: int = 20) -> list[Job]:
    """The newest jobs first (at most ``limit``), statuses resolved."""
    folder = jobs_dir(workspace)
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    found = []
    for path in paths:
        if not _ID.fullmatch(path.stem):
            continue
        try:
            found.append(read_job(workspace, path.stem))
        except (JobError, OSError):
            continue
    found.sort(key=lambda job: job.record.get("created_at", ""), reverse=True)
    return found[:limit]


def cancel_job(workspace: str | os.PathLike, job: Job) -> None:
    """Asks a job to stop: before its run exists it never starts training; after, it stops after the
    current batch (the run is then marked cancelled)."""
    _cancel_path(workspace, job.id).touch()
    current = read_job(workspace, job.id)
    if current.run_id:
        cancel(runs.read_run(runs.runs_dir(workspace) / current.run_id))


def cancel_requested(workspace: str | os.PathLike, job_id: str) -> bool:
    return _cancel_path(workspace, job_id).exists()


def dismiss(workspace: str | os.PathLike, job_id: str) -> None:
    """Hides a finished job from the page's list (its record stays)."""
    update_job(workspace, job_id, dismissed=True)


def read_log_tail(workspace: str | os.PathLike, job_id: str, lines: int = 20) -> str:
    try:
        text = log_path(workspace, job_id).read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def wait(job: Job, timeout: float) -> int | None:
    """Waits for a job started by this process; its exit code (None if it was started elsewhere)."""
    pid = job.record.get("pid")
    process = _CHILDREN.get(pid) if isinstance(pid, int) else None
    return None if process is None else process.wait(timeout=timeout)


# ---------------------------------------------------------------------------------------------------
# The child's side: `python -m core train --job ID`


class JobReporter:
    """What the training process tells its job record: running, its run, its outcome."""

    def __init__(self, workspace: str | os.PathLike, job_id: str):
        self.workspace, self.job_id = Path(workspace), _check_id(job_id)

    def run_created(self, run: runs.Run) -> None:
        update_job(self.workspace, self.job_id, run_id=run.id)
        if cancel_requested(self.workspace, self.job_id):
            cancel(run)

    def warnings(self, warnings: list[str]) -> None:
        update_job(self.workspace, self.job_id, warnings=list(warnings))

    def finished(self, run: runs.Run) -> None:
        update_job(
            self.workspace,
            self.job_id,
            status=run.status,
            run_id=run.id,
            error=run.meta.get("error"),
            test_accuracy=run.meta.get("test_accuracy"),
            finished_at=runs.utc_now(),
        )

    def failed(self, message: str, status: str = FAILED) -> None:
        update_job(self.workspace, self.job_id, status=status, error=message, finished_at=runs.utc_now())


@contextlib.contextmanager
def reporting(workspace: str | os.PathLike, job_id: str) -> Iterator[JobReporter]:
    """Marks the job running for the block; an exception escaping it is recorded as the job's failure
    (and raised again). The lock was handed over by `start`; it is taken here when the job was not
    started through it (a hand-run command with --job)."""
    reporter = JobReporter(workspace, job_id)
    if not holds_handed_lock(_lock_path(workspace, job_id)):
        jobs_dir(workspace).mkdir(parents=True, exist_ok=True)
        if not locks.acquire(_lock_path(workspace, job_id)):
            raise JobError(f"Job {job_id} is already running in another process.")
    if cancel_requested(workspace, job_id):
        reporter.failed("Cancelled by the user before training started.", status=CANCELLED)
        raise JobCancelled("Cancelled by the user before training started.")
    update_job(workspace, job_id, status=RUNNING, pid=os.getpid())
    try:
        yield reporter
    except KeyboardInterrupt:
        if read_job(workspace, job_id).is_active:
            reporter.failed("Interrupted.", status=CANCELLED)
        raise
    except BaseException as exc:
        reporter.failed(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")
        raise


# ---------------------------------------------------------------------------------------------------
# Runs in training


def cancel(run: runs.Run) -> None:
    """Asks a training run to stop after its current batch (it is then marked cancelled)."""
    run.file(runs.CANCEL_FILE).touch()


def active_runs(workspace: str | os.PathLike) -> list[runs.Run]:
    """Runs still training in a live process."""
    _reap()
    return [r for r in runs.list_runs(workspace) if r.status == runs.RUNNING]


def job_progress(workspace: str | os.PathLike, job: Job) -> dict:
    """Fraction done and a one-line message for a job: from its run's progress once the run exists."""
    if job.run_id:
        try:
            return progress_summary(runs.read_run(runs.runs_dir(workspace) / job.run_id))
        except runs.RunError:
            pass
    return {"fraction": 0.0, "message": "Starting: loading TensorFlow, scanning the images", "epoch": 0, "epochs": 1}


def progress_summary(run: runs.Run) -> dict:
    """Fraction done and a one-line message for a training run, from its progress.json (a damaged file
    reads as no progress yet)."""
    try:
        return _summary(runs.read_progress(run))
    except (TypeError, ValueError, AttributeError):
        return {"fraction": 0.0, "message": "Progress unknown (progress.json is damaged)", "epoch": 0, "epochs": 1}


def _summary(progress: dict) -> dict:
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
