"""AppTest: the picked run is kept in the address (?run=ID), so a reload or a shared link shows the same run
instead of the newest; a link to a run that is not there says so and shows the newest."""

from __future__ import annotations

import json
import shutil

from apptest import HOME
from streamlit.testing.v1 import AppTest


def _two_runs(app_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace, ignore=shutil.ignore_patterns(".lock"))
    (original,) = [p for p in (workspace / "runs").iterdir() if (p / "run.json").exists()]
    newer = original.parent / "29991231-235959-newer-0000"  # sorts as the newest
    shutil.copytree(original, newer)
    meta = json.loads((newer / "run.json").read_text())
    meta["name"] = "newer"
    (newer / "run.json").write_text(json.dumps(meta))
    return workspace, original.name, newer.name


def _page(workspace, monkeypatch, run_param=None):
    monkeypatch.setenv("XAI_WORKSPACE", str(workspace))
    at = AppTest.from_file(HOME, default_timeout=240)
    if run_param is not None:
        at.query_params["run"] = run_param
    return at.run()


def test_the_address_names_the_picked_run_and_a_new_session_opens_it(app_workspace, tmp_path, monkeypatch):
    workspace, older, newer = _two_runs(app_workspace, tmp_path)
    first = _page(workspace, monkeypatch)
    assert not first.exception
    assert first.selectbox(key="run_picker").value == newer  # no link: the newest
    assert first.query_params["run"] == newer
    first.selectbox(key="run_picker").select(older).run()
    assert first.query_params["run"] == older  # the pick is in the address
    reloaded = _page(workspace, monkeypatch, run_param=older)  # a new session from that address
    assert not reloaded.exception
    assert reloaded.selectbox(key="run_picker").value == older


def test_a_link_to_a_missing_run_says_so_and_shows_the_newest(app_workspace, tmp_path, monkeypatch):
    workspace, _, newer = _two_runs(app_workspace, tmp_path)
    at = _page(workspace, monkeypatch, run_param="../../etc/passwd")
    assert not at.exception
    assert at.selectbox(key="run_picker").value == newer
    assert any("is not among the complete runs" in w.value for w in at.sidebar.warning)
    assert at.query_params["run"] == newer
