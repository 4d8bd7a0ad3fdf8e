"""Experiment tracking with MLflow: a run of this dashboard logged as an MLflow run, read back with
MLflow's own tools (``mlflow ui``, ``MlflowClient``).

    python -m core train ... --mlflow [TRACKING_URI]          each epoch live, the rest when it ends
    python -m core import-model ... --mlflow [TRACKING_URI]
    python -m core mlflow-log RUN_ID [--uri TRACKING_URI]      a finished run, afterwards

What an MLflow run (named after the dashboard's run id) holds:
    params      the hyper-parameters and what the run was trained on (`core.tracking_fields`)
    metrics     per epoch: history.csv's columns (loss, accuracy, val_loss, val_accuracy, learning_rate),
                step = epoch, logged live by `core.tracking_callback`; at the end metrics.json's scalars as
                ``test/<name>``, epochs_trained, best_epoch, ``seconds/<duration>``
    artifacts   run.json, metrics.json, history.csv, evaluation/ (confusion matrix and ROC curves as PNG and
                as CSV/JSON, predictions.csv: `core.tracking_artifacts`)
    model       an MLflow Keras model (``mlflow.keras``), linked to the run (MLflow 3 keeps it under the
                experiment's ``models/``, not among the run's artifacts); if that flavour fails, the .keras
                file as the artifact ``model/model.keras`` and ``model_note`` says why

Where it goes (`core.tracking_store`): the workspace's own SQLite store by default, or any tracking URI.
run.json records the MLflow run under ``mlflow`` (tracking URI, experiment, run id, link), so pages link
each run to its MLflow run, and logging again reuses it. Tracking never costs a training run: a failure
becomes a warning in run.json and the run is kept. MLflow (about 1.5 s to import) is imported only when
something is logged.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core import runs, system
from core.tracking_fields import final_metrics, params_of, run_metrics, safe_key, tags_of
from core.tracking_store import (  # re-exported: callers need only core.tracking
    DB_FILE,
    DEFAULT,
    TrackingError,
    check_uri,
    connect,
    default_uri,
    ensure_experiment,
    redact,
    resolve_uri,
    short_error,
    store_dir,
    ui_command,
    ui_url,
)

__all__ = [
    "DB_FILE",
    "DEFAULT",
    "DEFAULT_EXPERIMENT",
    "RunTracker",
    "TrackingError",
    "check_uri",
    "connect",
    "default_uri",
    "final_metrics",
    "link",
    "log_run",
    "params_of",
    "record_failure",
    "redact",
    "resolve_uri",
    "store_dir",
    "ui_command",
    "ui_url",
]

DEFAULT_EXPERIMENT = "xai-dashboard"
RUN_FIELD = "mlflow"  # run.json's record of the MLflow run
MODEL_NAME = "model"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
WARNING_PREFIX = "MLflow tracking failed"
LOAD_NOTE = (
    "to load it: import core.model_import first (it registers this project's layers), then mlflow.keras.load_model"
)


# ---------------------------------------------------------------------------------------------------
# The MLflow run of a dashboard run


@dataclass(frozen=True)
class _Session:
    """An open MLflow run: the client, the resolved URI, the experiment and the run ids."""

    client: Any
    uri: str
    experiment: str
    experiment_id: str
    run_id: str
    reused: bool


def _open(run: runs.Run, uri: str, experiment: str) -> _Session:
    """The MLflow run recorded in run.json when it is in this store, else a new one."""
    client = connect(uri)
    try:
        experiment_id = ensure_experiment(client, uri, experiment)
        recorded = run.meta.get(RUN_FIELD)
        if isinstance(recorded, dict) and recorded.get("run_id") and recorded.get("tracking_uri") == redact(uri):
            try:
                found = client.get_run(recorded["run_id"])
            except Exception:  # deleted from the store: log to a new MLflow run
                found = None
            if found is not None and found.info.lifecycle_stage == "active":
                info = found.info
                return _Session(client, uri, experiment, info.experiment_id, info.run_id, True)
        created = client.create_run(
            experiment_id, start_time=_milliseconds(run.meta.get("created_at")), tags=tags_of(run), run_name=run.id
        )
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow could not start a run in {redact(uri)}: {short_error(exc)}") from exc
    return _Session(client, uri, experiment, experiment_id, created.info.run_id, False)


def _record(run: runs.Run, session: _Session, **fields: Any) -> runs.Run:
    """Writes the MLflow run into run.json (and drops earlier tracking warnings: tracking works now)."""
    current = runs.read_run(run.path).meta
    warnings = [w for w in current.get("warnings") or [] if not str(w).startswith(WARNING_PREFIX)]
    previous = current.get(RUN_FIELD) if isinstance(current.get(RUN_FIELD), dict) else {}
    kept = previous if previous.get("run_id") == session.run_id else {}  # what was logged there before
    record = {
        **{k: v for k, v in kept.items() if k not in ("error", "failed_at")},
        "tracking_uri": redact(session.uri),
        "experiment": session.experiment,
        "experiment_id": session.experiment_id,
        "run_id": session.run_id,
        "ui_url": ui_url(session.uri, session.experiment_id, session.run_id),
        "recorded_at": runs.utc_now(),
        **fields,
    }
    return runs.update_run(run, **{RUN_FIELD: record, "warnings": warnings})


def record_failure(run: runs.Run, message: str, tracking_uri: str | None = None) -> str:
    """Records a tracking failure in run.json: ``mlflow.error`` and one warning (replacing an earlier
    one) that says how to log the run again. Returns the warning."""
    given = (tracking_uri or "").strip()
    retry = f"python -m core mlflow-log {run.id}" + (f" --uri '{redact(given)}'" if given and given != DEFAULT else "")
    warning = f"{WARNING_PREFIX}: {message} The run itself is kept; log it again with: {retry}"
    try:
        current = runs.read_run(run.path).meta
        warnings = [w for w in current.get("warnings") or [] if not str(w).startswith(WARNING_PREFIX)]
        previous = current.get(RUN_FIELD) if isinstance(current.get(RUN_FIELD), dict) else {}
        record = {"tracking_uri": redact(given or DEFAULT), **previous, "error": message, "failed_at": runs.utc_now()}
        runs.update_run(run, **{RUN_FIELD: record, "warnings": [*warnings, warning]})
    except (runs.RunError, OSError):
        pass  # the run folder is gone or read-only: nothing to record the warning in
    return warning


# ---------------------------------------------------------------------------------------------------
# What gets logged


def _log_params(session: _Session, run: runs.Run) -> None:
    """Parameters not logged yet (MLflow never changes a logged one) and the tags."""
    from mlflow.entities import Param, RunTag

    logged = session.client.get_run(session.run_id).data.params
    params = [Param(k, v) for k, v in params_of(run).items() if k not in logged]
    tags = [RunTag(k, v) for k, v in tags_of(run).items()]
    for start in range(0, max(len(params), 1), 100):
        session.client.log_batch(session.run_id, params=params[start : start + 100], tags=tags if not start else [])


def _log_metrics(session: _Session, run: runs.Run) -> None:
    """history.csv per epoch (the epochs the live callback did not log) and the final metrics (changed ones)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries: list[Metric] = []
    try:
        history = runs.load_history(run)
    except runs.RunError:
        history = None
    if history is not None:
        for key in (c for c in history.columns if c != "epoch"):
            name = safe_key(key)
            logged = (
                {m.step for m in session.client.get_metric_history(session.run_id, name)} if session.reused else set()
            )
            for epoch, value in zip(history["epoch"], history[key]):
                number = _finite(value)
                if number is not None and int(epoch) not in logged:
                    entries.append(Metric(name, number, now, int(epoch)))
    final = dict(run_metrics(run))
    with contextlib.suppress(runs.RunError):
        final.update(final_metrics(runs.load_metrics(run)))
    latest = session.client.get_run(session.run_id).data.metrics if session.reused else {}
    entries += [Metric(k, v, now, 0) for k, v in final.items() if latest.get(k) != v]
    for start in range(0, len(entries), BATCH):
        session.client.log_batch(session.run_id, metrics=entries[start : start + BATCH])


def _log_files(session: _Session, run: runs.Run) -> list[str]:
    """run.json, metrics.json, history.csv and evaluation/ (confusion matrix, ROC curves, predictions)."""
    from core import tracking_artifacts

    with tempfile.TemporaryDirectory(prefix="xai-mlflow-") as tmp:
        folder = Path(tmp)
        for name in (runs.RUN_FILE, runs.METRICS_FILE, runs.HISTORY_FILE):
            if run.file(name).is_file():
                shutil.copy2(run.file(name), folder / name)
        try:
            predictions = runs.load_predictions(run)
        except runs.RunError:
            predictions = None
        if predictions is not None and len(predictions):
            tracking_artifacts.write_evaluation_files(predictions, folder / "evaluation")
            shutil.copy2(run.file(runs.PREDICTIONS_FILE), folder / "evaluation" / runs.PREDICTIONS_FILE)
        written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        session.client.log_artifacts(session.run_id, str(folder))
    return written


def _log_model(session: _Session, run: runs.Run) -> tuple[str, str | None, str | None]:
    """The model as an MLflow Keras model; if that fails, its files as artifacts.

    Returns:
        (what it was logged as, the model URI or None, a note or None).
    """
    from core.model_import import PREPROCESSING_FILE, SAVEDMODEL_DIR

    saved = run.path / SAVEDMODEL_DIR
    if not run.model_path.is_file():
        if saved.is_dir():
            session.client.log_artifacts(session.run_id, str(saved), f"{MODEL_NAME}/{SAVEDMODEL_DIR}")
            if run.file(PREPROCESSING_FILE).is_file():
                session.client.log_artifact(session.run_id, str(run.file(PREPROCESSING_FILE)), MODEL_NAME)
            return (
                f"artifact {MODEL_NAME}/{SAVEDMODEL_DIR}",
                None,
                "an imported SavedModel is logged as its files: no MLflow flavour loads it with its preprocessing",
            )
        return "nothing", None, "the run has no model file"
    try:
        model_uri = _log_keras_flavour(session, run)
    except Exception as exc:  # flavour unavailable or failing with this Keras: the file itself
        session.client.log_artifact(session.run_id, str(run.model_path), MODEL_NAME)
        return (
            f"artifact {MODEL_NAME}/{runs.MODEL_FILE}",
            None,
            f"mlflow.keras could not log it ({short_error(exc)}); the .keras file is logged as an artifact instead",
        )
    return f"mlflow.keras model {model_uri}", model_uri, LOAD_NOTE


def _log_keras_flavour(session: _Session, run: runs.Run) -> str:
    """`mlflow.keras.log_model` into the session's run, with a tensor signature and pinned requirements
    (given, so MLflow does not infer them by loading the model in a subprocess)."""
    import mlflow
    import mlflow.keras
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from core.model_import import load_run_model

    model = load_run_model(run.path)
    shape = lambda tensor: tuple(-1 if d is None else int(d) for d in tensor.shape)  # noqa: E731
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape(model.inputs[0]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), shape(model.outputs[0]))]),
    )
    versions = system.library_versions()
    requirements = [
        f"{name}=={versions[name]}" for name in ("keras", "tensorflow", "tensorflow-cpu") if name in versions
    ]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(session.uri)
    try:
        with mlflow.start_run(run_id=session.run_id):
            info = mlflow.keras.log_model(
                model, name=MODEL_NAME, signature=signature, pip_requirements=requirements or None
            )
    finally:
        mlflow.set_tracking_uri(previous)
    return info.model_uri


# ---------------------------------------------------------------------------------------------------
# Logging a run


def log_run(
    run: runs.Run,
    tracking_uri: str | None = None,
    workspace: str | os.PathLike | None = None,
    experiment: str | None = None,
) -> dict:
    """Logs a finished run to MLflow (into the MLflow run recorded in run.json when it is in this store).

    A complete run gets everything (see the module's docstring); a failed or cancelled one its params,
    history, run.json, and the MLflow status FAILED or KILLED. Logging again adds only what changed.

    Args:
        run: the run (complete, failed or cancelled; not one still training).
        tracking_uri: where to log (see `resolve_uri`); None: the workspace's own store.
        workspace: the workspace of the default store (default: the run's own workspace).
        experiment: the MLflow experiment's name (default ``xai-dashboard``), created when missing.

    Returns:
        ``{"mlflow_run_id", "tracking_uri", "experiment_id", "model_logged_as", "model_uri", "model_note",
        "ui_url" (tracking servers; else None), "ui_command" (local stores), "artifacts", "seconds"}``.

    Raises:
        TrackingError: (a ValueError) a bad URI, an unreachable server, a run still training, or MLflow
            refusing something; the message says which.
    """
    started = time.monotonic()
    run = runs.read_run(run.path)
    if run.status == runs.RUNNING:
        raise TrackingError(f"Run {run.id} is still training: log it to MLflow once it has finished.")
    workspace = workspace if workspace is not None else run.path.parent.parent
    uri = resolve_uri(tracking_uri, workspace)
    session = _open(run, uri, experiment or DEFAULT_EXPERIMENT)
    run = _record(run, session)  # before run.json is logged: its copy names its MLflow run
    step = "parameters"
    try:
        _log_params(session, run)
        step = "metrics"
        _log_metrics(session, run)
        step = "files"
        artifacts = _log_files(session, run)
        step = "model"
        before = run.meta.get(RUN_FIELD) or {}
        if session.reused and before.get("model_logged_as"):  # logged into this MLflow run before
            logged_as, model_uri, note = (before["model_logged_as"], before.get("model_uri"), before.get("model_note"))
        elif run.is_complete:
            logged_as, model_uri, note = _log_model(session, run)
        else:
            logged_as, model_uri, note = "nothing", None, f"the run is {run.status}: no model"
        status = {runs.COMPLETE: "FINISHED", runs.CANCELLED: "KILLED"}.get(run.status, "FAILED")
        session.client.set_terminated(session.run_id, status, end_time=_milliseconds(run.meta.get("finished_at")))
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"Logging run {run.id} to MLflow failed at its {step}: {short_error(exc)}") from exc
    seconds = round(time.monotonic() - started, 2)
    _record(
        run,
        session,
        logged_at=runs.utc_now(),
        model_logged_as=logged_as,
        model_uri=model_uri,
        model_note=note,
        log_seconds=seconds,
    )
    return {
        "mlflow_run_id": session.run_id,
        "tracking_uri": redact(uri),
        "experiment_id": session.experiment_id,
        "model_logged_as": logged_as,
        "model_uri": model_uri,
        "model_note": note,
        "ui_url": ui_url(uri, session.experiment_id, session.run_id),
        "ui_command": ui_command(uri),
        "artifacts": artifacts,
        "seconds": seconds,
    }


class RunTracker:
    """MLflow tracking of one run from its start to its end, never raising.

    `callbacks` (give it to ``train(extra_callbacks=...)``) opens the MLflow run as soon as the run
    exists, logs the parameters and returns the callback that logs every epoch; `finish` logs the rest
    into the same MLflow run (`log_run`). A failure is recorded as a warning in run.json and kept in
    `error` (and told to ``on_error``); the run itself is never touched otherwise.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        workspace=None,
        experiment: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ):
        self.tracking_uri, self.workspace, self.on_error = tracking_uri, workspace, on_error
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.run: runs.Run | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self._told: set[str] = set()  # failures already given to on_error

    def callbacks(self, run: runs.Run) -> list:
        self.run = run
        try:
            uri = resolve_uri(
                self.tracking_uri, self.workspace if self.workspace is not None else run.path.parent.parent
            )
            session = _open(run, uri, self.experiment)
            _record(run, session, live=True)
            _log_params(session, run)
        except Exception as exc:
            self._failed(run, exc)
            return []
        from core.tracking_callback import MlflowEpochLogger

        return [MlflowEpochLogger(session.client, session.run_id, on_error=lambda exc: self._failed(run, exc))]

    def finish(self, run: runs.Run | None = None) -> dict | None:
        """Logs the ended run (`log_run`); returns its result, or None (nothing to log, or `error`)."""
        run = run or self.run
        if run is None:  # training failed before its run existed
            return None
        try:
            self.result = log_run(run, self.tracking_uri, self.workspace, self.experiment)
        except Exception as exc:
            self._failed(run, exc)
            return None
        self.error = None
        return self.result

    def _failed(self, run: runs.Run, exc: Exception) -> None:
        error = str(exc) if isinstance(exc, TrackingError) else short_error(exc)
        told = error in self._told  # the same failure when training starts and when it ends: told once
        self.error = error
        warning = record_failure(run, error, self.tracking_uri)
        self._told.add(error)
        if self.on_error is not None and not told:
            self.on_error(warning)


def link(run: runs.Run) -> dict | None:
    """What pages show about a run's MLflow run: ``{"run_id", "experiment_id", "tracking_uri", "url",
    "ui_command", "error", "model_logged_as"}`` (url: the server's page, or the local `mlflow ui` page
    once started), or None when the run was never tracked. Reads run.json only."""
    record = run.meta.get(RUN_FIELD)
    if not isinstance(record, dict):
        return None
    uri, run_id, experiment_id = record.get("tracking_uri"), record.get("run_id"), record.get("experiment_id")
    url = record.get("ui_url")
    command = ui_command(uri) if isinstance(uri, str) else None
    if not url and command and run_id and experiment_id:
        url = f"{LOCAL_UI}/#/experiments/{experiment_id}/runs/{run_id}"
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": uri,
        "url": url,
        "ui_command": command,
        "error": record.get("error"),
        "model_logged_as": record.get("model_logged_as"),
    }


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _milliseconds(stamp: Any) -> int | None:
    """An ISO timestamp from run.json as MLflow's milliseconds since the epoch (None if unreadable)."""
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except (TypeError, ValueError):
        return None
