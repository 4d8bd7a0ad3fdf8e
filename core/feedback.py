"""Users' flags on predictions and explanations, kept in a SQLite database inside the workspace.

    <workspace>/feedback/feedback.db        the flags (WAL mode: the dashboard and the API write at once)
    <workspace>/feedback/images/<sha256>.<ext>   each flagged image, stored once whatever the number of flags

The schema carries its version in ``PRAGMA user_version``; `MIGRATIONS` holds one function per version,
applied in order inside one write transaction, so an old database is brought up to date on first use.
Only the standard library's ``sqlite3`` is used; no streamlit, no TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core import __version__, runs

FEEDBACK_DIR = "feedback"
DB_FILE = "feedback.db"
IMAGES_DIR = "images"
BUSY_TIMEOUT_MS = 30_000

FLAG_TYPES: dict[str, str] = {
    "wrong_prediction": "Wrong prediction",
    "wrong_label": "Wrong label in the data",
    "implausible_explanation": "Implausible explanation",
    "shortcut": "Shortcut / artefact",
}
"""Flag type -> its label in the UI."""

SOURCES = ("dashboard", "api", "cli")
COLUMNS = (
    "id",
    "created_at",
    "flag_type",
    "correct_class",
    "comment",
    "run_id",
    "predicted_class",
    "probabilities",
    "explained_class",
    "method",
    "params",
    "image_sha256",
    "image_file",
    "app_version",
    "source",
)


class FeedbackError(ValueError):
    """A flag that cannot be stored (unknown type, bad image, ...); the message says what was received."""


# ---- schema and migrations --------------------------------------------------------------------------


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE flags (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            flag_type TEXT NOT NULL,
            correct_class TEXT,
            comment TEXT NOT NULL DEFAULT '',
            run_id TEXT NOT NULL,
            predicted_class TEXT,
            probabilities TEXT NOT NULL DEFAULT '{}',
            explained_class TEXT,
            method TEXT,
            params TEXT NOT NULL DEFAULT '{}',
            image_sha256 TEXT NOT NULL,
            image_file TEXT NOT NULL,
            app_version TEXT NOT NULL
        )"""
    )


def _v2(conn: sqlite3.Connection) -> None:
    """Version 2: where a flag came from (dashboard, api, cli), and indexes for the page's filters."""
    conn.execute("ALTER TABLE flags ADD COLUMN source TEXT NOT NULL DEFAULT 'dashboard'")
    conn.execute("CREATE INDEX IF NOT EXISTS flags_run ON flags (run_id, flag_type)")
    conn.execute("CREATE INDEX IF NOT EXISTS flags_image ON flags (image_sha256)")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2}
"""Version -> the function that brings a database from version - 1 to it."""
SCHEMA_VERSION = max(MIGRATIONS)


def feedback_dir(workspace) -> Path:
    return Path(workspace) / FEEDBACK_DIR


def db_path(workspace) -> Path:
    return feedback_dir(workspace) / DB_FILE


def images_dir(workspace) -> Path:
    return feedback_dir(workspace) / IMAGES_DIR


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Applies the missing migrations up to ``target`` in one IMMEDIATE transaction (so two processes
    opening a new database at once migrate it once). Returns the version reached."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise FeedbackError(
            f"The feedback database has schema version {current}, newer than this app's {SCHEMA_VERSION}."
        )
    if current >= target:
        return current
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)  # read again under the write lock
        if current > SCHEMA_VERSION:
            raise FeedbackError(
                f"The feedback database has schema version {current}, newer than this app's {SCHEMA_VERSION}."
            )
        for version in range(current + 1, target + 1):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return schema_version(conn)


def connect(workspace, target: int = SCHEMA_VERSION) -> sqlite3.Connection:
    """An autocommit connection to the workspace's feedback database (created and migrated on first use)."""
    path = db_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(conn, target)
    return conn


def _connect_read(workspace) -> sqlite3.Connection | None:
    """A connection for reading flags, or None when the workspace has no feedback database yet (nothing
    is created). The file is opened read-only (``mode=ro``, no WAL switch), so flags can be read from a
    read-only workspace; an older schema is migrated when the database can be written, else read as is."""
    path = db_path(workspace)
    if not path.is_file():
        return None
    conn = _open_read_only(path)
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        conn.close()
        raise FeedbackError(
            f"The feedback database has schema version {version}, newer than this app's {SCHEMA_VERSION}."
        )
    if version < SCHEMA_VERSION:
        conn.close()
        try:
            return connect(workspace)
        except sqlite3.OperationalError:  # read-only: read the old schema (SELECT * returns its columns)
            if version == 0:
                return None
            conn = _open_read_only(path)
    return conn


def _open_read_only(path: Path) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:
        if runs.write_error(path.parent) is None:
            raise
        # A WAL database in a folder nobody may write: its -shm file cannot be created. Nothing can
        # change the file there either, so it is read as immutable.
        conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _unwritable(workspace, exc: sqlite3.OperationalError) -> FeedbackError:
    return FeedbackError(f"The feedback database {db_path(workspace)} cannot be written ({exc})")


# ---- images --------------------------------------------------------------------------------------


def image_bytes(image) -> bytes:
    """Encoded image bytes from bytes (checked to be an image) or a uint8/float (H, W, 3) array (PNG)."""
    from core.data import ImageError, load_image
    from core.visualize import png_bytes

    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            load_image(data)
        except ImageError as exc:
            raise FeedbackError(f"The flagged image cannot be stored: {exc}") from exc
        return data
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[2] != 3:
        raise FeedbackError(f"Expected image bytes or an (H, W, 3) array. Received shape {array.shape}")
    return png_bytes(np.clip(array, 0, 255).astype(np.uint8))


def _extension(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        kind = (image.format or "png").lower()
    return {"jpeg": "jpg", "tiff": "tif"}.get(kind, kind)


def store_image(workspace, image) -> tuple[str, str]:
    """Stores the image once under its SHA-256; returns (sha256, file name relative to the images folder)."""
    data = image_bytes(image)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{digest}.{_extension(data)}"
    folder = images_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        temporary = folder / f".{name}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, target)  # atomic: two writers of one image leave one complete file
    return digest, name


def image_path(workspace, flag: dict) -> Path:
    return images_dir(workspace) / flag["image_file"]


# ---- flags ---------------------------------------------------------------------------------------


def _json(value, what: str) -> str:
    try:
        return json.dumps(value if value is not None else {}, sort_keys=True, default=_to_builtin)
    except (TypeError, ValueError) as exc:
        raise FeedbackError(f"Expected {what} as a JSON-serialisable mapping. Received {value!r}") from exc


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def add_flag(
    workspace,
    image,
    *,
    flag_type: str,
    run_id: str,
    correct_class: str | None = None,
    comment: str = "",
    predicted_class: str | None = None,
    probabilities: dict[str, float] | None = None,
    explained_class: str | None = None,
    method: str | None = None,
    params: dict | None = None,
    source: str = "dashboard",
    conn: sqlite3.Connection | None = None,
) -> int:
    """Stores one flag and its image; returns the flag's id.

    Raises:
        FeedbackError: unknown flag type or source, missing run id, an image that cannot be read.
    """
    if flag_type not in FLAG_TYPES:
        raise FeedbackError(f"Expected a flag type among {list(FLAG_TYPES)}. Received: flag_type={flag_type!r}")
    if source not in SOURCES:
        raise FeedbackError(f"Expected a source among {list(SOURCES)}. Received: source={source!r}")
    if not run_id or not isinstance(run_id, str):
        raise FeedbackError(f"Expected the id of the run that made the prediction. Received: run_id={run_id!r}")
    if comment is not None and len(str(comment)) > 5000:
        raise FeedbackError(f"Expected a comment of at most 5000 characters. Received {len(str(comment))}")
    digest, name = store_image(workspace, image)
    row = {
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "flag_type": flag_type,
        "correct_class": correct_class or None,
        "comment": str(comment or ""),
        "run_id": run_id,
        "predicted_class": predicted_class,
        "probabilities": _json(probabilities, "probabilities"),
        "explained_class": explained_class,
        "method": method,
        "params": _json(params, "params"),
        "image_sha256": digest,
        "image_file": name,
        "app_version": __version__,
        "source": source,
    }
    own = conn is None
    conn = conn or connect(workspace)
    try:
        cursor = conn.execute(
            f"INSERT INTO flags ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
        )
        return int(cursor.lastrowid)
    finally:
        if own:
            conn.close()


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    flag = dict(row)
    for key in ("probabilities", "params"):
        try:
            flag[key] = json.loads(flag[key] or "{}")
        except ValueError:
            flag[key] = {}
    return flag


def list_flags(
    workspace,
    *,
    run_id: str | None = None,
    flag_type: str | None = None,
    correct_class: str | None = None,
    predicted_class: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Flags, newest first, filtered by any of the given fields (None: no filter)."""
    clauses, values = [], []
    for column, value in (
        ("run_id", run_id),
        ("flag_type", flag_type),
        ("correct_class", correct_class),
        ("predicted_class", predicted_class),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            values.append(value)
    sql = "SELECT * FROM flags" + (f" WHERE {' AND '.join(clauses)}" if clauses else "") + " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        values.append(int(limit))
    conn = _connect_read(workspace)
    if conn is None:
        return []
    with closing(conn):
        return [_decode(row) for row in conn.execute(sql, values)]


def get_flag(workspace, flag_id: int) -> dict[str, Any] | None:
    conn = _connect_read(workspace)
    if conn is None:
        return None
    with closing(conn):
        row = conn.execute("SELECT * FROM flags WHERE id = ?", (int(flag_id),)).fetchone()
    return _decode(row) if row else None


def count_flags(workspace) -> int:
    conn = _connect_read(workspace)
    if conn is None:
        return 0
    with closing(conn):
        return int(conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0])


def counts(workspace, run_id: str | None = None) -> dict[str, dict[str, int]]:
    """``{"by_type": {type: n}, "by_class": {predicted class: n}, "by_correct_class": {class: n}}``."""
    where, values = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
    result: dict[str, dict[str, int]] = {"by_type": {}, "by_class": {}, "by_correct_class": {}}
    conn = _connect_read(workspace)
    if conn is None:
        return result
    with closing(conn):
        for key, column in (
            ("by_type", "flag_type"),
            ("by_class", "predicted_class"),
            ("by_correct_class", "correct_class"),
        ):
            rows = conn.execute(
                f"SELECT {column}, COUNT(*) FROM flags {where} GROUP BY {column} ORDER BY {column}", values
            )
            result[key] = {(name if name is not None else "(none)"): int(n) for name, n in rows}
    return result


def delete_flag(workspace, flag_id: int) -> bool:
    """Deletes one flag; its image goes too when no other flag refers to it. True if a flag was deleted.

    Raises:
        FeedbackError: the database cannot be written (a read-only workspace, say).
    """
    if not db_path(workspace).is_file():
        return False  # no flags at all: nothing created
    try:
        conn = connect(workspace)
    except sqlite3.OperationalError as exc:
        raise _unwritable(workspace, exc) from None
    with closing(conn):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _unwritable(workspace, exc) from None
        try:
            row = conn.execute("SELECT image_file FROM flags WHERE id = ?", (int(flag_id),)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                return False
            conn.execute("DELETE FROM flags WHERE id = ?", (int(flag_id),))
            others = conn.execute("SELECT COUNT(*) FROM flags WHERE image_file = ?", (row[0],)).fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if not others:
        (images_dir(workspace) / row[0]).unlink(missing_ok=True)
    return True


def export_csv(flags: list[dict]) -> str:
    """The flags as CSV text (probabilities and params as JSON)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for flag in flags:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in flag.items()})
    return buffer.getvalue()


def default_export_dir(workspace) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(workspace) / "datasets" / f"feedback-{stamp}"


def export_image_folder(workspace, out_dir, flags: list[dict] | None = None) -> dict[str, Any]:
    """Copies each flagged image with a correct class to ``out_dir/<correct class>/<sha256>.<ext>`` (a
    folder ``core train --data`` reads). Flags without a correct class are skipped and counted.

    Returns:
        ``{"folder", "per_class": {class: images}, "skipped": flags without a correct class}``.
    """
    flags = list_flags(workspace) if flags is None else flags
    out_dir = Path(out_dir)
    per_class: dict[str, set[str]] = {}
    skipped = 0
    for flag in flags:
        label = flag.get("correct_class")
        if not label:
            skipped += 1
            continue
        safe = "".join(c if c.isalnum() or c in "-_ ." else "_" for c in label).strip(". ") or "unnamed"
        source = image_path(workspace, flag)
        if not source.is_file():
            skipped += 1
            continue
        target = out_dir / safe / flag["image_file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(source, target)
        per_class.setdefault(label, set()).add(flag["image_file"])
    return {"folder": str(out_dir), "per_class": {k: len(v) for k, v in sorted(per_class.items())}, "skipped": skipped}
