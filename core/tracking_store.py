"""Where MLflow tracking goes: tracking URIs, the store, the experiment (see `core.tracking`).

The default tracking store is the workspace's own, ``sqlite:///<workspace>/mlflow/mlflow.db``, with the
artifacts beside it in ``<workspace>/mlflow/artifacts``; creating it runs MLflow's database migrations
once (about 7 s on 2 CPU cores; first opens are serialised between processes), later opens take about
1 s. Any URI works: ``sqlite:///<path>`` (the artifacts go beside the database), ``file:///<folder>`` or a
plain folder (MLflow's file store, which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true: set here,
since it was asked for), a ``.db`` path, ``http(s)://host:port`` (a tracking server, which must answer
within 5 s), and MLflow's other stores (databricks, postgresql, mysql, mssql).

MLflow itself is imported only by `connect` and `experiment_id`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from core import runs

DEFAULT = "default"  # the value of a bare --mlflow: the workspace's own store
STORE_DIR = "mlflow"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
PROBE_SECONDS = 5.0  # a tracking server that does not answer /health within this is refused
EXPECTED_URIS = (
    "Expected sqlite:///<path>.db, file:///<folder>, http(s)://host:port, or nothing (the workspace's own store)."
)
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")  # a plain path ending so is a SQLite database
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql")  # MLflow's own stores


class TrackingError(ValueError):
    """MLflow tracking cannot be done as asked (bad URI, unreachable server, logging failed); the message
    says which and what to do."""


# ---------------------------------------------------------------------------------------------------
# Tracking URIs


def store_dir(workspace: str | os.PathLike | None) -> Path:
    """The folder of the workspace's own tracking store."""
    return runs.workspace_dir(workspace) / STORE_DIR


def default_uri(workspace: str | os.PathLike | None) -> str:
    """``sqlite:///<workspace>/mlflow/mlflow.db`` (an absolute path: four slashes)."""
    return f"sqlite:///{store_dir(workspace) / DB_FILE}"


def redact(uri: str) -> str:
    """The URI without a password (it is recorded in run.json and printed)."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (None for another scheme or an in-memory database)."""
    if not uri.lower().startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if not rest.startswith("/") or rest[1:] in ("", ":memory:"):
        return None
    return Path(unquote(rest[1:]))


def _parts(text: str):
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise TrackingError(f"Malformed MLflow tracking URI {redact_text(text)!r} ({exc}). {EXPECTED_URIS}") from None
    return parts


def redact_text(text: str) -> str:
    """`redact`, for text that may not even parse as a URI."""
    try:
        return redact(text)
    except ValueError:
        return text.split("@", 1)[-1] if "@" in text else text


def _missing_folder(text: str, folder: Path) -> TrackingError:
    if folder.exists():
        return TrackingError(
            f"The MLflow tracking store {redact(text)!r} cannot be created: {folder} is a file, not a folder"
        )
    return TrackingError(
        f"The MLflow tracking store {redact(text)!r} cannot be created: the folder {folder} does not exist "
        "(create it first, or correct the path)"
    )


def _check_database(text: str, database: Path) -> None:
    if database.is_dir():
        raise TrackingError(
            f"The MLflow tracking store {redact(text)!r} cannot be used: {database} is a folder, not a database file"
        )
    if not database.parent.is_dir():
        raise _missing_folder(text, database.parent)


def _check_folder_store(text: str, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise TrackingError(
            f"The MLflow tracking store {redact(text)!r} cannot be used: {folder} is a file, not a folder"
        )
    if not folder.parent.is_dir():
        raise _missing_folder(text, folder.parent)


def check_uri(tracking_uri: str | None, workspace: str | os.PathLike | None = None) -> None:
    """Checks a tracking URI before any work, creating nothing and importing no MLflow: a known scheme, a
    well-formed address, and for local stores a database path that is not a folder and whose folder exists
    (a typo in a path is refused, not created; the workspace's own store may be created). A tracking
    server is not contacted here: one that does not answer is a warning when tracking starts.

    Raises:
        TrackingError: what is wrong, in one line.
    """
    text = (tracking_uri or "").strip()
    if not text or text == DEFAULT:
        return
    parts = _parts(text)
    scheme = parts.scheme.lower()
    if not scheme:  # a plain path: a database file or a file store folder
        path = Path(text).expanduser().resolve()
        if path.suffix in DB_SUFFIXES:
            _check_database(text, path)
        else:
            _check_folder_store(text, path)
    elif scheme == "sqlite":
        database = sqlite_file(text)
        if database is not None:
            _check_database(text, database.expanduser().resolve())
    elif scheme == "file":
        _check_folder_store(text, Path(unquote(parts.path)).expanduser().resolve())
    elif scheme in ("http", "https"):
        if not parts.hostname:
            raise TrackingError(f"Malformed MLflow tracking URI {redact(text)!r}: no host. {EXPECTED_URIS}")
    elif scheme.split("+", 1)[0] not in OTHER_SCHEMES:
        raise TrackingError(f"Unknown MLflow tracking URI scheme {scheme!r}. Received: {redact(text)}. {EXPECTED_URIS}")


def resolve_uri(tracking_uri: str | None, workspace: str | os.PathLike | None = None) -> str:
    """The tracking URI to use: the workspace's own store for None, ``""`` or ``"default"`` (its folder
    created); relative paths made absolute (a recorded URI then works from any folder); a file store's
    folder created, never a missing parent (`check_uri`).

    Raises:
        TrackingError: a bad URI (`check_uri`), a folder that cannot be created, or an http(s) server
            that does not answer.
    """
    text = (tracking_uri or "").strip()
    check_uri(text, workspace)
    shown = text
    try:
        if not text or text == DEFAULT:
            shown = default_uri(workspace)
            folder = store_dir(workspace)
            folder.mkdir(parents=True, exist_ok=True)
            return default_uri(workspace)
        scheme = urlsplit(text).scheme.lower()
        if not scheme:  # a plain path: a database file or a file store folder
            path = Path(text).expanduser().resolve()
            if path.suffix in DB_SUFFIXES:
                return f"sqlite:///{path}"
            return _file_store(path)
        if scheme == "sqlite":
            database = sqlite_file(text)
            if database is None:
                return text
            database = database.expanduser().resolve()
            query = text.split("?", 1)[1] if "?" in text else ""
            return f"sqlite:///{database}" + (f"?{query}" if query else "")
        if scheme == "file":
            return _file_store(Path(unquote(urlsplit(text).path)).expanduser().resolve())
    except OSError as exc:
        raise TrackingError(f"The MLflow tracking store {redact(shown)!r} cannot be created: {exc}") from exc
    if scheme in ("http", "https"):
        _probe(text)
        # A server that stops answering mid-way must not hold training for minutes (MLflow: 7 retries).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        return text.rstrip("/")
    return text  # databricks, postgresql, ...: MLflow decides (and `connect` explains a refusal)


def _file_store(path: Path) -> str:
    path.mkdir(exist_ok=True)  # its parent exists (`check_uri`)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses its file store unless asked
    return path.as_uri()


def _probe(uri: str) -> None:
    """Any HTTP answer from ``<uri>/health`` (even 404) means the server is there."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"Cannot reach the MLflow tracking server at {redact(uri)} ({reason}). Start it (mlflow server "
            f"--host 127.0.0.1 --port 5000) or give another URI; without one, runs are tracked in the "
            f"workspace's own store."
        ) from exc


def ui_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run on a tracking server (None for a local store: see `ui_command`)."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    return f"{redact(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_command(uri: str) -> str | None:
    """The command that serves MLflow's UI over a local store (None for a tracking server)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "sqlite":
        return f".venv/bin/mlflow ui --backend-store-uri '{uri}' --port 5000"
    if scheme == "file":
        return f"MLFLOW_ALLOW_FILE_STORE=true .venv/bin/mlflow ui --backend-store-uri '{uri}' --port 5000"
    return None


# ---------------------------------------------------------------------------------------------------
# The store and the experiment


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialises opening a SQLite store between processes (two first opens would both migrate it)."""
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    fd = os.open(database.with_name(database.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def connect(uri: str):
    """An ``MlflowClient`` on a resolved tracking URI, the store opened (created on first use).

    Raises:
        TrackingError: MLflow cannot open the store (unknown scheme, missing driver, damaged database).
    """
    from mlflow import MlflowClient

    try:
        with _store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingError(
            f"The MLflow tracking store {redact(uri)} cannot be used: {short_error(exc)}. {EXPECTED_URIS}"
        ) from exc
    return client


def ensure_experiment(client, uri: str, name: str) -> str:
    """The experiment's id, created when missing (in a SQLite store, with its artifacts beside the database)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        database = sqlite_file(uri)
        location = (database.parent / ARTIFACTS_DIR / _safe_name(name)).as_uri() if database else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created by another process meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"The MLflow experiment {name!r} was deleted. Restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or choose another experiment name."
        )
    return experiment.experiment_id


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "experiment"


def short_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (MLflow's messages can run to pages)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 300 else text[:299] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
