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

import pandas as pd

RUNNING, COMPLETE, FAILED, CANCELLED = "running", "complete", "failed", "cancelled"
STATUSES = (RUNNING, COMPLETE, FAILED, CANCELLED)

RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
PROGRESS_FILE = "progress.json"
CANCEL_FILE = "cancel"  # its presence asks a training process to stop


class RunError(ValueError):
    """A run is missing, unreadable or incomplete; the message says which and why."""


def workspace_dir(path: str | os.PathLike | None = None) -> Path:
    """The workspace: ``path`` if given, else ``$XAI_WORKSPACE``, else ``./workspace``."""
    chosen = path or os.environ.get("XAI_WORKSPACE") or "workspace"
    return Path(chosen).expanduser().resolve()


def runs_dir(workspace) -> Path:
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


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_csv(path, frame: pd.DataFrame) -> None:
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


def create_run(workspace, name: str, meta: dict) -> Run:
    """Creates a new run folder with status ``running`` and returns it."""
    run_path = runs_dir(workspace) / new_run_id(name)
    run_path.mkdir(parents=True, exist_ok=False)
    full = {**meta, "status": RUNNING, "created_at": utc_now(), "pid": os.getpid()}
    atomic_write_json(run_path / RUN_FILE, full)
    return Run(run_path, full)


def read_run(path) -> Run:
    """Reads one run folder. Raises RunError when run.json is missing or unreadable."""
    path = Path(path)
    try:
        meta = json.loads((path / RUN_FILE).read_text("utf-8"))
    except FileNotFoundError as exc:
        raise RunError(f"{path} is not a run: it has no {RUN_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise RunError(f"The {RUN_FILE} of {path.name} cannot be read: {exc}") from exc
    if not isinstance(meta, dict):
        raise RunError(f"The {RUN_FILE} of {path.name} is not a JSON object")
    return Run(path, meta)


def update_run(run: Run, **fields) -> Run:
    """Merges ``fields`` into run.json (re-read first, so concurrent updates are not lost)."""
    current = read_run(run.path).meta
    current.update(fields)
    atomic_write_json(run.path / RUN_FILE, current)
    return Run(run.path, current)


def mark_stopped(run: Run, reason: str, status: str = FAILED) -> Run:
    """Ends a run that did not complete: ``failed`` (the default) or ``cancelled``, with the reason."""
    return update_run(run, status=status, error=reason, finished_at=utc_now())


def list_runs(workspace) -> list[Run]:
    """Every readable run of a workspace, newest first. Unreadable folders are left out."""
    root = runs_dir(workspace)
    if not root.is_dir():
        return []
    runs = []
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            try:
                runs.append(_with_stale_check(read_run(child)))
            except RunError:
                continue
    runs.sort(key=lambda r: (r.meta.get("created_at", ""), r.id), reverse=True)
    return runs


def _with_stale_check(run: Run) -> Run:
    """A run still marked running whose process is gone crashed: report it as failed."""
    pid = run.meta.get("pid")
    if run.status == RUNNING and isinstance(pid, int) and not pid_alive(pid):
        return Run(run.path, {**run.meta, "status": FAILED, "error": "The training process stopped unexpectedly."})
    return run


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, finished but not yet reaped, counts as ended)."""
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


def latest_complete_run(workspace) -> Run | None:
    """The newest run whose status is complete, or None."""
    return next((r for r in list_runs(workspace) if r.is_complete), None)


def find_run(workspace, run_id: str) -> Run:
    """A run by id (or by an existing folder path)."""
    candidate = Path(run_id)
    if candidate.is_dir() and (candidate / RUN_FILE).exists():
        return read_run(candidate)
    path = runs_dir(workspace) / run_id
    if not path.is_dir():
        known = ", ".join(r.id for r in list_runs(workspace)[:5]) or "none"
        raise RunError(f"No run named {run_id!r} in {runs_dir(workspace)}. Known runs: {known}")
    return read_run(path)


# ---------------------------------------------------------------------------------------------------
# Run files


def _require(run: Run, name: str) -> Path:
    path = run.file(name)
    if not path.exists():
        raise RunError(f"Run {run.id} has no {name} (status: {run.status})")
    return path


def load_history(run: Run) -> pd.DataFrame:
    return pd.read_csv(_require(run, HISTORY_FILE))


def load_predictions(run: Run) -> pd.DataFrame:
    # Class names stay text: folders named "0"/"1" or "NA" must not become numbers or missing values.
    text = {"path": str, "true_class": str, "pred_class": str}
    return pd.read_csv(_require(run, PREDICTIONS_FILE), dtype=text, keep_default_na=False)


def load_metrics(run: Run) -> dict:
    return json.loads(_require(run, METRICS_FILE).read_text("utf-8"))


def write_progress(run: Run, **progress) -> None:
    atomic_write_json(run.file(PROGRESS_FILE), {**progress, "updated_at": time.time()})


def read_progress(run: Run) -> dict:
    try:
        return json.loads(run.file(PROGRESS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------------
# Comparing runs


def comparison_table(selected: list[Run]) -> pd.DataFrame:
    """One row per run: architecture, epochs, test accuracy, macro ROC AUC, macro F1, per-class F1, time."""
    rows = []
    for run in selected:
        row = {
            "run": run.id,
            "architecture": run.meta.get("architecture"),
            "source": run.meta.get("source", "trained"),
            "epochs": run.meta.get("epochs_trained"),
            "test accuracy": run.meta.get("test_accuracy"),
            "macro ROC AUC": run.meta.get("roc_auc_macro"),
            "seconds": (run.meta.get("durations") or {}).get("total_seconds"),
        }
        try:
            metrics = load_metrics(run)
            row["macro F1"] = metrics["macro_avg"]["f1"]
            row.update({f"F1 {name}": values["f1"] for name, values in metrics["per_class"].items()})
        except (RunError, KeyError, ValueError):
            pass
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def combined_history(selected: list[Run]) -> pd.DataFrame:
    """The history of several runs stacked, with a ``run`` column (runs without history are left out)."""
    frames = []
    for run in selected:
        try:
            frames.append(load_history(run).assign(run=run.id))
        except (RunError, ValueError):
            continue
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "epoch"])
