"""AppTest of the Training page: curves, the new-run form (offline defaults, refusals), background jobs
with their outcome, and the run comparison (like with like)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from apptest import open_page, plots

from core import jobs, runs


@pytest.fixture
def own_workspace(app_workspace, tmp_path):
    """A private copy of the app workspace: these tests add jobs and runs."""
    target = tmp_path / "ws"
    shutil.copytree(app_workspace, target, ignore=shutil.ignore_patterns("jobs", "logs"))
    return target


def compare_tables(at) -> list:
    return [d.value for d in at.dataframe if "test accuracy" in getattr(d.value, "columns", [])]


def test_training_page(app_workspace, monkeypatch):
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    loss, accuracy, compare_accuracy, compare_loss = plots(at)
    assert [t["name"] for t in loss["data"]] == ["train", "validation"]
    assert [t["name"] for t in accuracy["data"]] == ["train", "validation"]
    assert loss["layout"]["xaxis"]["tickformat"] == "d"  # whole epochs only
    assert {m.label: m.value for m in at.metric}["Epochs trained"] == "3"
    params = at.dataframe[0].value
    assert params.loc["arch", "value"] == "compact_cnn"
    assert params.loc["epochs", "value"] == "3"
    # Compare runs: one line per run, metrics side by side, legends with short names.
    (run_id,) = at.multiselect(key="compare_runs").value
    (short,) = [t["name"] for t in compare_accuracy["data"]]
    assert short.startswith("app-test #") and short.endswith(run_id.rsplit("-", 1)[-1])
    (table,) = compare_tables(at)
    assert "test accuracy" in table.columns and "F1 circle" in table.columns
    assert table.index.tolist() == [run_id]


def test_the_form_defaults_work_offline(app_workspace, monkeypatch):
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    assert at.selectbox(key="train_arch").value == "compact_cnn"
    assert at.radio(key="train_weights").value == "none"
    assert at.number_input(key="train_img_size").value == 64
    assert any("ImageNet weights" in c.value for c in at.caption)
    # Advanced options: one device or mirrored as TensorFlow sees fit, float32, no cache.
    assert at.selectbox(key="train_strategy").value == "auto"
    assert at.selectbox(key="train_strategy").options == ["auto", "one", "mirrored", "multiworker"]
    assert at.selectbox(key="train_lr_rule").value == "none"
    assert not at.checkbox(key="train_mixed_precision").value and not at.checkbox(key="train_cache").value


def test_training_page_refuses_bad_folders(app_workspace, monkeypatch, tmp_path):
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    at.text_input(key="train_folder").set_value("/etc").run()
    assert any("outside the folders this dashboard may read" in e.value for e in at.error)
    empty = app_workspace / "empty_folder"
    empty.mkdir(exist_ok=True)
    at.text_input(key="train_folder").set_value(str(empty)).run()
    _submit(at)
    assert not at.exception
    assert any("Found no sub-folders" in e.value for e in at.error)
    assert not [r for r in runs.list_runs(app_workspace) if r.status == "running"]
    assert jobs.list_jobs(app_workspace) == []


def test_missing_imagenet_weights_are_refused_before_a_job_starts(own_workspace, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(own_workspace / "no-keras-home"))
    at = open_page("pages/2_Training.py", own_workspace, monkeypatch)
    at.text_input(key="train_folder").set_value(str(own_workspace / "datasets" / "shapes")).run()
    at.selectbox(key="train_arch").select("resnet50")
    at.radio(key="train_weights").set_value("imagenet")
    _submit(at)
    assert any("ImageNet weights for resnet50 are not on this machine" in e.value for e in at.error)
    assert jobs.list_jobs(own_workspace) == []


def _submit(at):
    (button,) = [b for b in at.button if b.key and b.key.startswith("start_")]
    button.click().run()
    return button.key


def test_a_job_started_from_the_page_shows_its_outcome(own_workspace, monkeypatch):
    at = open_page("pages/2_Training.py", own_workspace, monkeypatch)
    at.text_input(key="train_folder").set_value(str(own_workspace / "datasets" / "shapes")).run()
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_img_size").set_value(16)
    first_key = _submit(at)
    assert not at.exception
    (job,) = jobs.list_jobs(own_workspace)
    assert any(f"Training job {job.id[:8]} started" in s.value for s in at.success)
    new_keys = [b.key for b in at.button if b.key and b.key.startswith("start_")]
    assert new_keys and new_keys[0] != first_key  # the next click is a new request
    at.run()  # a rerun starts nothing
    assert len(jobs.list_jobs(own_workspace)) == 1
    deadline = time.monotonic() + 240
    while jobs.read_job(own_workspace, job.id).is_active and time.monotonic() < deadline:
        time.sleep(1)
    at.run()
    done = jobs.read_job(own_workspace, job.id)
    assert done.status == jobs.COMPLETE, done.error
    assert any("finished: test accuracy" in s.value and done.run_id in s.value for s in at.success)
    assert {b.key for b in at.button} >= {f"eval_{job.id}", f"explain_{job.id}", f"dismiss_{job.id}"}
    at.button(key=f"dismiss_{job.id}").click().run()
    assert not any("finished: test accuracy" in s.value for s in at.success)


def test_failed_and_cancelled_jobs_show_their_reason(own_workspace, monkeypatch):
    folder = jobs.jobs_dir(own_workspace)
    folder.mkdir()
    for job_id, status, error in (
        ("fail0001", "failed", "ImageNet weights for resnet50 could not be had"),
        ("canc0001", "cancelled", "Cancelled by the user."),
    ):
        record = {"id": job_id, "status": status, "error": error, "arch": "resnet50", "created_at": runs.utc_now()}
        (folder / f"{job_id}.json").write_text(json.dumps(record))
    at = open_page("pages/2_Training.py", own_workspace, monkeypatch)
    assert any("failed: ImageNet weights for resnet50 could not be had" in e.value for e in at.error)
    assert any("was cancelled: Cancelled by the user." in i.value for i in at.info)


def test_compare_runs_of_different_classes_apart(own_workspace, monkeypatch):
    (base,) = runs.list_runs(own_workspace)
    other = runs.runs_dir(own_workspace) / (base.id[:-4] + "beef")
    shutil.copytree(base.path, other)
    meta = json.loads((other / "run.json").read_text())
    meta.update(class_names=["cat", "dog", "eel"], name="a-very-long-run-name-that-would-squeeze-the-legend")
    (other / "run.json").write_text(json.dumps(meta))
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["per_class"] = dict(zip(["cat", "dog", "eel"], metrics["per_class"].values(), strict=True))
    (other / "metrics.json").write_text(json.dumps(metrics))
    at = open_page("pages/2_Training.py", own_workspace, monkeypatch)
    at.multiselect(key="compare_runs").set_value([base.id, other.name]).run()
    assert any("2 different sets of classes" in i.value for i in at.info)
    first, second = compare_tables(at)
    assert {c for c in first.columns if c.startswith("F1 ")} == {"F1 circle", "F1 square", "F1 triangle"}
    assert {c for c in second.columns if c.startswith("F1 ")} == {"F1 cat", "F1 dog", "F1 eel"}
    legend = [t["name"] for t in plots(at)[-1]["data"]]
    assert max(len(n) for n in legend) <= 34 and legend[-1].endswith("#beef")


def test_compare_runs_shows_whole_epochs_and_a_dash_for_an_imported_run(own_workspace, monkeypatch):
    (base,) = runs.list_runs(own_workspace)
    imported = runs.runs_dir(own_workspace) / (base.id[:-4] + "f00d")
    shutil.copytree(base.path, imported)
    meta = json.loads((imported / "run.json").read_text())
    meta.update(source="imported", epochs_trained=None)  # an imported model: no epochs known
    (imported / "run.json").write_text(json.dumps(meta))
    at = open_page("pages/2_Training.py", own_workspace, monkeypatch)
    at.multiselect(key="compare_runs").set_value([base.id, imported.name]).run()
    assert not at.exception, [e.value for e in at.exception]
    (table,) = compare_tables(at)
    assert table.loc[base.id, "epochs"] == "3" and table.loc[imported.name, "epochs"] == "—"
    assert table.loc[imported.name, "source"] == "imported"


@pytest.mark.parametrize(
    ("tf_config", "words"),
    [(None, "needs the cluster in the TF_CONFIG environment variable"), ("{oops", "TF_CONFIG is not valid JSON")],
)
def test_multiworker_without_a_usable_cluster_is_refused_on_the_page(app_workspace, monkeypatch, tf_config, words):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    at.selectbox(key="train_strategy").select("multiworker")
    _submit(at)
    assert not at.exception
    assert any(words in e.value for e in at.error)
    assert jobs.list_jobs(app_workspace) == []
