"""The command line on hostile input, second round: tracking URIs, workspaces that are files or read-only,
``--out`` paths, ranges. Every refusal is one line, exit code 2, no traceback, before any slow work
(TensorFlow, models, training), and creates nothing."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import run_main

from core import feedback, runs, tracking, tracking_store

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOT_WRITABLE = "/proc/self"  # a folder that even root cannot create files in (chmod does not stop root)


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- 1. --mlflow URIs are checked before training ---------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("mlflow://x", "--mlflow: Unknown MLflow tracking URI scheme 'mlflow'. Received: mlflow://x."),
        ("http://[::1", "--mlflow: Malformed MLflow tracking URI 'http://[::1' (Invalid IPv6 URL)."),
        ("http://", "--mlflow: Malformed MLflow tracking URI 'http://': no host."),
    ],
)
@pytest.mark.parametrize("command", ["train", "import-model"])
def test_a_bad_mlflow_uri_is_refused_before_any_work(capsys, tmp_path, command, uri, words):
    args = ["train", "--data", tmp_path / "no-data"] if command == "train" else ["import-model", tmp_path / "m.keras"]
    if command == "import-model":
        args += ["--data", tmp_path / "no-data", "--preprocess", "raw"]
    code, out, err = run_main(capsys, *args, "--mlflow", uri, "--workspace", tmp_path / "ws")
    assert words in one_line_error(code, err) and out == ""
    assert not (tmp_path / "ws").exists()  # nothing trained, nothing created


def test_an_unreachable_server_is_told_once(copied_run):
    uri = f"http://127.0.0.1:{closed_port()}"
    told = []
    tracker = tracking.RunTracker(uri, copied_run.path.parent.parent, on_error=told.append)
    assert tracker.callbacks(copied_run) == []  # training goes on without live logging
    assert tracker.finish(copied_run) is None
    assert len(told) == 1 and "Cannot reach the MLflow tracking server" in told[0]
    assert "Cannot reach the MLflow tracking server" in tracker.error


# ---- 2. sqlite and file stores: a folder or a missing parent is refused at once, nothing created ------


def test_mlflow_log_to_a_sqlite_path_that_is_a_folder_fails_at_once(capsys, copied_run, tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    started = time.monotonic()
    code, _, err = run_main(
        capsys, "mlflow-log", copied_run.id, "--uri", f"sqlite:///{folder}", "--workspace", tmp_path / "ws"
    )
    assert time.monotonic() - started < 10
    assert f"{folder} is a folder, not a database file" in one_line_error(code, err)
    assert "mlflow" not in runs.read_run(copied_run.path).meta


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda base: f"sqlite:///{base}/nonexistent/dir/x.db",
        lambda base: f"file://{base}/nonexistent/dir",
        lambda base: f"{base}/nonexistent/dir/x.db",
    ],
)
def test_a_store_whose_folder_does_not_exist_is_refused_not_created(capsys, tmp_path, make_uri):
    uri = make_uri(tmp_path)
    code, _, err = run_main(capsys, "train", "--data", tmp_path / "no-data", "--mlflow", uri, "--workspace", tmp_path)
    line = one_line_error(code, err)
    assert "cannot be created: the folder" in line and "does not exist" in line
    assert not (tmp_path / "nonexistent").exists()
    with pytest.raises(ValueError, match="does not exist"):
        tracking_store.resolve_uri(uri, tmp_path)
    assert not (tmp_path / "nonexistent").exists()


def test_the_default_store_inside_the_workspace_is_still_created(tmp_path):
    uri = tracking_store.resolve_uri(None, tmp_path / "new-ws")
    assert uri == f"sqlite:///{tmp_path / 'new-ws' / 'mlflow' / 'mlflow.db'}"
    assert (tmp_path / "new-ws" / "mlflow").is_dir()


# ---- 3 and 4. workspaces that are files or read-only ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "x"],
        ["import-model", "m.keras", "--data", "x", "--preprocess", "raw"],
        ["demo"],
        ["evaluate", "R"],
        ["explain", "R", "--image", "x.png", "--out", "out"],
        ["audit", "R"],
        ["trust", "R"],
        ["embed", "R"],
        ["report", "R"],
        ["mlflow-log", "R"],
        ["serve"],
        ["feedback", "list"],
        ["feedback", "counts"],
        ["feedback", "delete", "--id", "1"],
    ],
)
def test_a_workspace_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, args):
    afile = tmp_path / "afile"
    afile.write_text("kept")
    code, out, err = run_main(capsys, *args, "--workspace", afile)
    assert one_line_error(code, err) == f"error: --workspace {afile} is a file, not a folder"
    assert afile.read_text() == "kept"
    code, out, err = run_main(capsys, *args, "--workspace", afile / "ws")
    assert one_line_error(code, err) == f"error: --workspace {afile / 'ws'} is not a folder ({afile} is a file)"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "x"],
        ["demo"],
        ["audit", "R"],
        ["trust", "R"],
        ["embed", "R"],
        ["mlflow-log", "R"],
        ["evaluate", "R"],
        ["feedback", "delete", "--id", "1"],
        ["feedback", "export-folder"],
    ],
)
def test_commands_that_write_refuse_a_read_only_workspace_up_front(capsys, args):
    code, out, err = run_main(capsys, *args, "--workspace", NOT_WRITABLE)
    line = one_line_error(code, err)
    assert line.startswith(f"error: the workspace {Path(NOT_WRITABLE).resolve()} is read-only (")


def test_feedback_reads_a_workspace_without_a_database_and_creates_nothing(capsys, tmp_path):
    code, out, err = run_main(capsys, "feedback", "list", "--workspace", tmp_path)
    assert (code, out.strip(), err) == (0, "[]", "")
    code, out, err = run_main(capsys, "feedback", "counts", "--workspace", tmp_path)
    assert code == 0 and '"by_type": {}' in out
    code, out, err = run_main(capsys, "feedback", "delete", "--id", "1", "--workspace", tmp_path)
    assert code == 1 and "No flag with id 1." in err
    assert list(tmp_path.iterdir()) == []


def _read_only_mount_works() -> bool:
    import tempfile

    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        script = f"mount --bind -o ro '{folder}' '{folder}' && ! touch '{folder}/x' 2>/dev/null"
        try:
            done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def cli_read_only(workspace: Path, *args) -> subprocess.CompletedProcess:
    """``python -m core ARGS`` with ``workspace`` mounted read-only (a user namespace: read-only for root too)."""
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "core", *map(str, args)])
    script = f"mount --bind -o ro '{workspace}' '{workspace}' && exec {command}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "XAI_WORKSPACE": str(workspace)}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_feedback_on_a_read_only_workspace_reads_and_refuses_writes(tmp_path):
    # Root ignores file modes: a read-only bind mount in a user namespace (util-linux unshare) is what makes the
    # workspace read-only here. Not skipped where it is missing: the test says so and fails.
    assert _read_only_mount_works(), "this test needs `unshare -rm` and a read-only bind mount (util-linux)"
    workspace = tmp_path / "ro"
    flag_id = feedback.add_flag(workspace, png(), flag_type="shortcut", run_id="r1", correct_class="circle")
    listed = cli_read_only(workspace, "feedback", "list", "--workspace", workspace)
    assert listed.returncode == 0, listed.stderr
    assert '"flag_type": "shortcut"' in listed.stdout and '"run_id": "r1"' in listed.stdout
    deleted = cli_read_only(workspace, "feedback", "delete", "--id", flag_id, "--workspace", workspace)
    assert deleted.returncode == 2 and deleted.stderr.strip() == (
        f"error: the workspace {workspace} is read-only (Read-only file system): choose a writable one with --workspace"
    )
    assert len(feedback.list_flags(workspace)) == 1  # nothing lost


def test_delete_flag_on_a_read_only_workspace_says_so_and_loses_nothing(tmp_path):
    """What the Feedback page calls: `feedback.delete_flag` itself, not the command line's up-front check."""
    assert _read_only_mount_works(), "this test needs `unshare -rm` and a read-only bind mount (util-linux)"
    workspace = tmp_path / "ro"
    flag_id = feedback.add_flag(workspace, png(), flag_type="shortcut", run_id="r1")
    code = (
        "import sys; from core import feedback\n"
        "try:\n    feedback.delete_flag(sys.argv[1], int(sys.argv[2]))\n"
        "except feedback.FeedbackError as exc:\n    print(exc)"
    )
    command = " ".join(f"'{a}'" for a in [sys.executable, "-c", code, workspace, flag_id])
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount --bind -o ro '{workspace}' '{workspace}' && exec {command}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"The feedback database {feedback.db_path(workspace)} cannot be written")
    assert len(feedback.list_flags(workspace)) == 1


# ---- 5. --out paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["report", "R"], ["feedback", "export-csv"]])
def test_out_that_is_a_folder_or_in_a_missing_folder_is_refused(capsys, tmp_path, args):
    code, _, err = run_main(capsys, *args, "--out", tmp_path, "--workspace", tmp_path / "ws")
    assert one_line_error(code, err) == f"error: --out {tmp_path} is a folder: give a file path"
    out = tmp_path / "nonexistent2" / "x" / "y.csv"
    code, _, err = run_main(capsys, *args, "--out", out, "--workspace", tmp_path / "ws")
    assert one_line_error(code, err) == (
        f"error: --out {out}: the folder {out.parent} does not exist (create it first, or correct the path)"
    )
    assert not (tmp_path / "nonexistent2").exists()


def test_export_csv_writes_into_an_existing_folder(capsys, tmp_path):
    feedback.add_flag(tmp_path, png(), flag_type="shortcut", run_id="r1")
    code, out, _ = run_main(capsys, "feedback", "export-csv", "--out", tmp_path / "f.csv", "--workspace", tmp_path)
    assert code == 0 and (tmp_path / "f.csv").read_text().startswith("id,created_at")


def test_export_folder_may_create_its_folder_but_not_a_missing_parent(capsys, tmp_path):
    feedback.add_flag(tmp_path, png(), flag_type="shortcut", run_id="r1", correct_class="circle")
    out = tmp_path / "nonexistent2" / "x"
    code, _, err = run_main(capsys, "feedback", "export-folder", "--out", out, "--workspace", tmp_path)
    assert one_line_error(code, err) == (
        f"error: --out {out}: the folder {out.parent} does not exist (create it first, or correct the path)"
    )
    assert not out.parent.exists()
    code, out_text, err = run_main(
        capsys, "feedback", "export-folder", "--out", tmp_path / "new", "--workspace", tmp_path
    )
    assert code == 0, err
    assert len(list((tmp_path / "new" / "circle").iterdir())) == 1


def test_write_report_refuses_a_folder(copied_run, tmp_path):
    from core import report

    with pytest.raises(report.ReportError, match="is a folder: give a file path"):
        report.write_report(copied_run, tmp_path)


# ---- 6. ranges checked by argparse ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "R", "--per-class", "-3"], "argument --per-class: must be between 0 and 100. Received: -3"),
        (["embed", "R", "--train-sample", "-5"], "argument --train-sample: must be between 0 and 100000. Received: -5"),
        (["serve", "--port", "0"], "argument --port: must be between 1 and 65535. Received: 0"),
        (["serve", "--workers", "0"], "argument --workers: must be between 1 and 256. Received: 0"),
        (["serve", "--max-upload-mb", "-1"], "argument --max-upload-mb: must be in (0, 10000). Received: -1"),
        (["feedback", "delete", "--id", "x"], "argument --id: expected a whole number. Received: 'x'"),
    ],
)
def test_ranges_are_checked_when_parsed(capsys, args, message):
    code, out, err = run_main(capsys, *args)
    assert code == 2 and out == "" and message in err and "Traceback" not in err


# ---- 7. the default store's real URI in messages ----------------------------------------------------


def test_the_default_store_that_cannot_be_created_is_named(tmp_path):
    workspace = Path("/proc/xai-no-such-workspace")
    with pytest.raises(ValueError) as caught:
        tracking_store.resolve_uri(None, workspace)
    message = str(caught.value)
    assert f"The MLflow tracking store 'sqlite:///{workspace}/mlflow/mlflow.db' cannot be created" in message
    assert "''" not in message
