"""AppTest of the Home page against a small prepared run."""

from __future__ import annotations

from apptest import HOME, open_page


def test_home_without_runs_offers_the_demo(tmp_path, monkeypatch):
    at = open_page(None, tmp_path, monkeypatch)
    assert at.title[0].value == "XAI dashboard for image classifiers"
    assert [b.label for b in at.button] == ["Create the demo run"]
    assert any("No run yet" in s.value for s in at.subheader)


def test_home_shows_the_current_run(app_workspace, monkeypatch):
    at = open_page(None, app_workspace, monkeypatch)
    labels = {m.label: m.value for m in at.metric}
    assert labels["Model"] == "compact_cnn"
    assert labels["Classes"] == "3"
    accuracy = float(labels["Test accuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert "Macro ROC AUC" in labels
    assert any("TensorFlow" in c.value and "device" in c.value for c in at.caption)
    devices = [c.value for c in at.caption if c.value.startswith("**Devices**")]
    assert devices == ["**Devices** DefaultStrategy, 1 replica(s) (CPU:0) · float32 · batch 8 per replica, 8 global"]
    assert len(at.selectbox(key="run_picker").options) == 1
    (serve,) = [c.value for c in at.code if "core serve" in c.value]
    run_id = at.selectbox(key="run_picker").value
    assert serve == f".venv/bin/python -m core serve --workspace {app_workspace} --run {run_id} --port 8000"


def test_home_does_not_import_tensorflow(app_workspace):
    """Home must paint without TensorFlow: run it in a fresh interpreter and look at sys.modules."""
    import subprocess
    import sys

    code = (
        "import sys, os; os.environ['XAI_WORKSPACE']=sys.argv[1];"
        "from streamlit.testing.v1 import AppTest;"
        f"at=AppTest.from_file({HOME!r}, default_timeout=60).run();"
        "assert not at.exception;"
        "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_ABSENT')"
    )
    out = subprocess.run([sys.executable, "-c", code, str(app_workspace)], capture_output=True, text=True, timeout=120)
    assert "TF_ABSENT" in out.stdout, out.stdout + out.stderr


def test_create_the_demo_when_the_workspace_is_a_file_says_so(tmp_path, monkeypatch):
    workspace = tmp_path / "a-file"
    workspace.write_text("not a folder")
    at = open_page(None, workspace, monkeypatch)
    at.button(key="create_demo").click().run()
    assert not at.exception
    assert any("is a file, not a folder" in e.value for e in at.error)
    assert workspace.read_text() == "not a folder"
