"""The run store: one folder per trained model under ``<workspace>/runs/<run id>/``.

Layout of a run folder:
    run.json          what the run is (dataset, classes, architecture, input size, preprocessing,
                      hyper-parameters, seed, library versions, status, durations)
    model.keras       the trained model (pixels 0-255 in, probabilities out)
    history.csv       one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy
    predictions.csv   one row per test image: path, true/predicted class, every class probability
    metrics.json      accuracy, roc_auc_macro, per-class precision/recall/F1/support/ROC AUC
    progress.json     live progress while the run is training
    cancel            present when the user asked the training to stop
    .lock             held (flock) by the training process for its lifetime: exact liveness

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a page
never reads half a file. This module does not import TensorFlow.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core import locks
from core.run_schema import (  # noqa: F401 - the statuses and the schema are re-exported
    CANCELLED,
    COMPLETE,
    FAILED,
    RUN_SCHEMA,
    RUNNING,
    STATUSES,
    schema_problems,
)

RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
SAVEDMODEL_DIR = "savedmodel"  # an imported SavedModel, copied into the run
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
PROGRESS_FILE = "progress.json"
CANCEL_FILE = "cancel"  # its presence asks a training process to stop
LOCK_FILE = ".lock"  # held by the process that trains (or imports) the run, for its lifetime
CRASHED_MESSAGE = "The training process stopped unexpectedly (killed, out of memory, or the machine restarted)."
# Files a process killed in the middle of saving leaves behind: never models, removed once the run is dead.
LEFTOVER_PATTERNS = (".tmp-*.keras", ".best.weights.h5", ".*.tmp")


class RunError(ValueError):
    """A run is missing, unreadable or incomplete; the message says which and why."""


def workspace_dir(path: str | os.PathLike | None = None) -> Path:
    """The workspace: ``path`` if given, else ``$XAI_WORKSPACE``, else ``./workspace``."""
    chosen = path or os.environ.get("XAI_WORKSPACE") or "workspace"
    return Path(chosen).expanduser().resolve()


def write_error(folder: str | os.PathLike) -> OSError | None:
    """None when a file can be created in ``folder`` (one is created and removed), else the error: a real
    probe, since file modes do not stop root and a read-only mount ignores them."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    os.unlink(name)
    return None


def check_workspace(path: str | os.PathLike | None = None, write: bool = False) -> Path:
    """The workspace (`workspace_dir`), checked before any work: not a file, and writable when ``write``
    (a temporary file is created and removed in it, or in its nearest existing parent when it does not
    exist yet: a new workspace is created there).

    Raises:
        RunError: ``--workspace X is a file, not a folder`` or ``the workspace X is read-only ...``.
    """
    chosen = path or os.environ.get("XAI_WORKSPACE") or "workspace"
    named = f"--workspace {chosen}" if path else f"the workspace {chosen}"
    workspace = workspace_dir(path)
    existing = workspace
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == workspace:
            raise RunError(f"{named} is a file, not a folder")
        raise RunError(f"{named} is not a folder ({existing} is a file)")
    if write and (exc := write_error(existing)) is not None:
        reason = exc.strerror or type(exc).__name__
        if existing != workspace:
            raise RunError(f"the workspace {workspace} cannot be created: {existing} is read-only ({reason})")
        raise RunError(f"the workspace {workspace} is read-only ({reason}): choose a writable one with --workspace")
    return workspace


def runs_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "runs"


# ---------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def _json_default(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot store {type(value).__name__} in JSON")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# ---------------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Run:
    """A run folder and the contents of its run.json at the time it was read."""

    path: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.meta.get("status", FAILED)

    @property
    def is_complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def model_stamp(self) -> tuple[int, int] | None:
        """(modification time in ns, size in bytes) of the run's model file (an imported SavedModel: its
        saved_model.pb), or None when the run has no model: changes whenever the model changes."""
        for candidate in (self.model_path, self.path / SAVEDMODEL_DIR / "saved_model.pb"):
            try:
                stat = candidate.stat()
            except OSError:
                continue
            return (stat.st_mtime_ns, stat.st_size)
        return None

    @property
    def label(self) -> str:
        """One line for pickers: id, architecture, status and accuracy."""
        acc = self.meta.get("test_accuracy")
        acc_text = f", test accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""
        return f"{self.id} ({self.meta.get('architecture', '?')}, {self.status}{acc_text})"

    def file(self, name: str) -> Path:
        return self.path / name


def new_run_id(name: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def create_run(workspace: str | os.PathLike, name: str, meta: dict) -> Run:
    """Creates a new run folder with status ``running`` and returns it.

    This process holds the run's lock until the run leaves ``running`` (see `update_run`) or the process
    ends; the folder is filled under a hidden name and renamed, so no reader sees it half-made.
    """
    root = runs_dir(workspace)
    if root.exists() and not root.is_dir():
        raise RunError(
            f"The workspace's runs folder {root} is a file, not a folder. Move it away or pick another workspace."
        )
    run_id = new_run_id(name)
    building = root / f".creating-{run_id}"
    building.mkdir(parents=True, exist_ok=False)
    run_path = root / run_id
    full = {**meta, "status": RUNNING, "created_at": utc_now(), "pid": os.getpid()}
    try:
        locks.acquire(building / LOCK_FILE)
        atomic_write_json(building / RUN_FILE, full)
        building.rename(run_path)
    except BaseException:
        locks.release(building / LOCK_FILE)
        import shutil

        shutil.rmtree(building, ignore_errors=True)
        raise
    _move_lock(building / LOCK_FILE, run_path / LOCK_FILE)
    return Run(run_path, full)


def _move_lock(old: Path, new: Path) -> None:
    """The lock descriptor stays open across the folder's rename; only its key in `locks` changes."""
    fd = locks._HELD.pop(os.fspath(old.absolute()), None)
    if fd is not None:
        locks._HELD[os.fspath(new.absolute())] = fd


def read_run(path: str | os.PathLike) -> Run:
    """Reads one run folder and checks its run.json against `RUN_SCHEMA`.

    Raises:
        RunError: run.json is missing, not JSON, not an object, or holds a field of the wrong type.
    """
    path = Path(path)
    try:
        meta = json.loads((path / RUN_FILE).read_text("utf-8"))
    except FileNotFoundError as exc:
        raise RunError(f"{path} is not a run: it has no {RUN_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise RunError(f"The {RUN_FILE} of {path.name} cannot be read: {exc}") from exc
    if not isinstance(meta, dict):
        raise RunError(f"The {RUN_FILE} of {path.name} is not a JSON object")
    problems = schema_problems(meta)
    if problems:
        raise RunError(f"The {RUN_FILE} of {path.name} is not valid: {'; '.join(problems)}")
    return Run(path, meta)


def update_run(run: Run, **fields: Any) -> Run:
    """Merges ``fields`` into run.json (re-read first, so concurrent updates are not lost).

    A run that leaves ``running`` releases the lock this process held for it.
    """
    current = _read_raw(run.path)
    current.update(fields)
    atomic_write_json(run.path / RUN_FILE, current)
    if current.get("status") != RUNNING:
        locks.release(run.path / LOCK_FILE)
    return Run(run.path, current)


def _read_raw(path: Path) -> dict:
    try:
        meta = json.loads((Path(path) / RUN_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"The {RUN_FILE} of {Path(path).name} cannot be read: {exc}") from exc
    if not isinstance(meta, dict):
        raise RunError(f"The {RUN_FILE} of {Path(path).name} is not a JSON object")
    return meta


def mark_stopped(run: Run, reason: str, status: str = FAILED) -> Run:
    """Ends a run that did not complete: ``failed`` (the default) or ``cancelled``, with the reason."""
    return update_run(run, status=status, error=reason, finished_at=utc_now())


def _run_folders(workspace) -> list[Path]:
    root = runs_dir(workspace)
    if not root.is_dir():
        return []
    return sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))


def list_runs(workspace: str | os.PathLike) -> list[Run]:
    """Every readable run of a workspace, newest first.

    Unreadable folders are left out (`unreadable_runs` says why). A run still marked ``running`` whose
    process is gone is recorded as failed now, and the leftovers of its model save are removed.
    """
    found = []
    for child in _run_folders(workspace):
        try:
            found.append(_with_stale_check(read_run(child)))
        except RunError:
            continue
    found.sort(key=lambda r: (r.meta.get("created_at", ""), r.id), reverse=True)
    return found


def unreadable_runs(workspace: str | os.PathLike) -> list[tuple[Path, str]]:
    """Run folders that cannot be used, each with the reason (missing, damaged or invalid run.json)."""
    problems = []
    for child in _run_folders(workspace):
        try:
            read_run(child)
        except RunError as exc:
            problems.append((child, str(exc)))
    return problems


def is_alive(run: Run) -> bool:
    """True while the process that trains (or imports) the run is alive: it holds the run's lock.

    Exact: the lock goes with the process, however it ends. Runs made before the lock existed (no
    .lock file) fall back to their recorded process id.
    """
    lock = run.path / LOCK_FILE
    if lock.exists() or locks.held_here(lock):
        return locks.is_held(lock)
    pid = run.meta.get("pid")
    return isinstance(pid, int) and pid_alive(pid)


def _with_stale_check(run: Run) -> Run:
    """A run still marked running whose process is gone crashed: record it as failed (once)."""
    if run.status != RUNNING or is_alive(run):
        return run
    lock = run.path / LOCK_FILE
    try:
        if not locks.acquire(lock):  # taken again meanwhile: cannot be (runs never restart); treat as live
            return run
    except OSError:  # a read-only workspace: report the failure without recording it
        return Run(run.path, {**run.meta, "status": FAILED, "error": CRASHED_MESSAGE})
    try:
        current = read_run(run.path)  # under the lock: the process may have finished meanwhile
        if current.status != RUNNING:
            return current
        clean_leftovers(run.path)
        return update_run(current, status=FAILED, error=CRASHED_MESSAGE, finished_at=utc_now())
    except (RunError, OSError):
        return Run(run.path, {**run.meta, "status": FAILED, "error": CRASHED_MESSAGE})
    finally:
        locks.release(lock)


def clean_leftovers(run_path: str | os.PathLike) -> list[str]:
    """Removes what a killed save leaves in a run folder (temporary model files, best-epoch weights,
    half-written files); returns the names removed. Call it only for a run whose process is gone."""
    removed = []
    for pattern in LEFTOVER_PATTERNS:
        for path in Path(run_path).glob(pattern):
            if path.is_file():
                try:
                    path.unlink()
                    removed.append(path.name)
                except OSError:
                    continue
    return sorted(removed)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, finished but not yet reaped, counts as ended).

    Only a fallback for runs without a lock: a reused process id would look alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def latest_complete_run(workspace: str | os.PathLike) -> Run | None:
    """The newest run whose status is complete, or None."""
    return next((r for r in list_runs(workspace) if r.is_complete), None)


def find_run(workspace: str | os.PathLike, run_id: str) -> Run:
    """A run by id (or by an existing folder path).

    Raises:
        RunError: no such run, or its run.json is unreadable or invalid (the message says which field).
    """
    candidate = Path(run_id)
    if candidate.is_dir() and (candidate / RUN_FILE).exists():
        return _with_stale_check(read_run(candidate))
    path = runs_dir(workspace) / run_id
    if not path.is_dir():
        known = ", ".join(r.id for r in list_runs(workspace)[:5]) or "none"
        raise RunError(f"No run named {run_id!r} in {runs_dir(workspace)}. Known runs: {known}")
    return _with_stale_check(read_run(path))


# ---------------------------------------------------------------------------------------------------
# Run files


def _require(run: Run, name: str) -> Path:
    path = run.file(name)
    if not path.exists():
        raise RunError(f"Run {run.id} has no {name} (status: {run.status})")
    return path


def _damaged(run: Run, name: str, exc: Exception) -> RunError:
    return RunError(f"The {name} of run {run.id} cannot be read ({type(exc).__name__}: {exc})")


def load_history(run: Run) -> pd.DataFrame:
    """history.csv: one row per epoch, with an integer ``epoch`` column.

    Raises:
        RunError: the file is missing, damaged, or has no epoch column.
    """
    try:
        frame = pd.read_csv(_require(run, HISTORY_FILE))
        frame["epoch"] = frame["epoch"].astype(int)
    except RunError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(run, HISTORY_FILE, exc) from exc
    return frame


def load_predictions(run: Run) -> pd.DataFrame:
    """predictions.csv (class names stay text: folders named "0"/"1" or "NA" must not become numbers)."""
    text = {"path": str, "true_class": str, "pred_class": str}
    try:
        return pd.read_csv(_require(run, PREDICTIONS_FILE), dtype=text, keep_default_na=False)
    except RunError:
        raise
    except (OSError, ValueError) as exc:
        raise _damaged(run, PREDICTIONS_FILE, exc) from exc


def load_metrics(run: Run) -> dict:
    """metrics.json as a dict. Raises RunError when it is missing, damaged or not a JSON object."""
    try:
        metrics = json.loads(_require(run, METRICS_FILE).read_text("utf-8"))
    except RunError:
        raise
    except (OSError, ValueError) as exc:
        raise _damaged(run, METRICS_FILE, exc) from exc
    if not isinstance(metrics, dict):
        raise RunError(f"The {METRICS_FILE} of run {run.id} is not a JSON object")
    return metrics


def write_progress(run: Run, **progress: Any) -> None:
    atomic_write_json(run.file(PROGRESS_FILE), {**progress, "updated_at": time.time()})


def read_progress(run: Run) -> dict:
    try:
        return json.loads(run.file(PROGRESS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------------
# Comparing runs


def short_names(selected: list[Run], width: int = 28) -> dict[str, str]:
    """Legend-sized names for runs: the run's name (cut to ``width``) and the id's random suffix, which
    keeps two runs of the same name apart. ``{run id: short name}``."""
    names = {}
    for run in selected:
        name = str(run.meta.get("name") or run.id)
        if len(name) > width:
            name = name[: width - 1] + "…"
        names[run.id] = f"{name} #{run.id.rsplit('-', 1)[-1]}"
    return names


def class_groups(selected: list[Run]) -> list[tuple[tuple[str, ...], list[Run]]]:
    """Runs grouped by their class names (same classes, same order of first appearance): only runs of
    one group can be compared class by class."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in selected:
        groups.setdefault(tuple(run.class_names), []).append(run)
    return list(groups.items())


def comparison_table(selected: list[Run]) -> pd.DataFrame:
    """One row per run: name, architecture, epochs, test accuracy, macro ROC AUC, macro F1, time.

    Per-class F1 columns (``F1 <class>``) are added only when every run has the same classes; otherwise
    a ``classes`` column says which classes each run has (compare those class by class apart, see
    `class_groups`).
    """
    same_classes = len(class_groups(selected)) == 1
    names = short_names(selected)
    rows = []
    for run in selected:
        row = {
            "run": run.id,
            "name": names[run.id],
            "architecture": run.meta.get("architecture"),
            "source": run.meta.get("source", "trained"),
            "epochs": run.meta.get("epochs_trained"),
            "test accuracy": run.meta.get("test_accuracy"),
            "macro ROC AUC": run.meta.get("roc_auc_macro"),
            "seconds": (run.meta.get("durations") or {}).get("total_seconds"),
        }
        if not same_classes:
            row["classes"] = ", ".join(run.class_names)
        try:
            metrics = load_metrics(run)
            row["macro F1"] = metrics["macro_avg"]["f1"]
            if same_classes:
                row.update({f"F1 {name}": values["f1"] for name, values in metrics["per_class"].items()})
        except (RunError, KeyError, ValueError, TypeError):
            pass
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def combined_history(selected: list[Run], short: bool = False) -> pd.DataFrame:
    """The history of several runs stacked, with a ``run`` column (runs without history are left out);
    ``short`` puts `short_names` in that column instead of the run ids (for legends)."""
    names = short_names(selected) if short else {r.id: r.id for r in selected}
    frames = []
    for run in selected:
        try:
            frames.append(load_history(run).assign(run=names[run.id]))
        except (RunError, ValueError):
            continue
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "epoch"])
