"""AppTest of the Training page against a small prepared run."""

from __future__ import annotations

from apptest import open_page, plots


def test_training_page(app_workspace, monkeypatch):
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    loss, accuracy, compare_accuracy, compare_loss = plots(at)
    assert [t["name"] for t in loss["data"]] == ["train", "validation"]
    assert [t["name"] for t in accuracy["data"]] == ["train", "validation"]
    assert {m.label: m.value for m in at.metric}["Epochs trained"] == "3"
    params = at.dataframe[0].value
    assert params.loc["arch", "value"] == "compact_cnn"
    assert params.loc["epochs", "value"] == "3"
    # Compare runs: one line per run, metrics side by side.
    (run_id,) = at.multiselect(key="compare_runs").value
    assert [t["name"] for t in compare_accuracy["data"]] == [run_id]
    assert "test accuracy" in at.dataframe[-1].value.columns
    assert at.dataframe[-1].value.index.tolist() == [run_id]


def test_training_page_refuses_bad_folders(app_workspace, monkeypatch, tmp_path):
    at = open_page("pages/2_Training.py", app_workspace, monkeypatch)
    at.text_input(key="train_folder").set_value("/etc").run()
    assert any("outside the folders this dashboard may read" in e.value for e in at.error)
    empty = app_workspace / "empty_folder"
    empty.mkdir(exist_ok=True)
    at.text_input(key="train_folder").set_value(str(empty)).run()
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    assert any("Found no sub-folders" in e.value for e in at.error)
    from core import runs

    assert not [r for r in runs.list_runs(app_workspace) if r.status == "running"]
