"""AppTest of the Dataset page against a small prepared run."""

from __future__ import annotations

from apptest import images, open_page, plots


def test_dataset_page(app_workspace, monkeypatch):
    at = open_page("pages/1_Dataset.py", app_workspace, monkeypatch)
    (figure,) = plots(at)
    assert sorted(trace["name"] for trace in figure["data"]) == ["test", "train", "val"]
    counts = at.dataframe[0].value
    assert list(counts.index) == ["circle", "square", "triangle"]
    assert counts["total"].tolist() == [24, 24, 24]
    assert len(images(at)) == 3 * 6  # six samples per class by default
    assert not at.warning  # balanced classes: no imbalance warning


def test_dataset_page_warns_on_imbalance(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    run = runs.latest_complete_run(app_workspace)
    copy = tmp_path / "ws"
    shutil.copytree(app_workspace, copy)
    dataset = copy / "datasets" / "imbalanced"  # inside the workspace: a data root
    shutil.copytree(run.meta["dataset"], dataset)
    for path in sorted((dataset / "train" / "circle").glob("*.png"))[:12]:
        path.unlink()
    copied_run = runs.latest_complete_run(copy)
    runs.update_run(copied_run, dataset=str(dataset))
    at = open_page("pages/1_Dataset.py", copy, monkeypatch)
    assert any("imbalance" in w.value for w in at.warning)


def test_dataset_page_on_another_folder(app_workspace, monkeypatch, tmp_path):
    from core.shapes import generate_shapes_dataset

    folder = generate_shapes_dataset(app_workspace / "datasets" / "other", per_class=5, image_size=20, seed=3)
    (folder / "train" / "circle" / "broken.png").write_bytes(b"not a png")
    at = open_page("pages/1_Dataset.py", app_workspace, monkeypatch)
    at.radio(key="dataset_source").set_value("Another folder").run()
    at.text_input(key="dataset_folder").set_value(str(folder)).run()
    assert not at.exception and not at.error
    counts = at.dataframe[0].value
    assert counts["total"].tolist() == [5, 5, 5]
    assert any("1 file skipped" in e.label for e in at.expander)
    at.text_input(key="dataset_folder").set_value("/").run()
    assert any("outside the folders" in e.value for e in at.error)


def test_dataset_page_sees_changed_files_and_rescans(app_workspace, monkeypatch, tmp_path):
    """The scan is keyed on the folder's files: a deleted image and a new broken one show at the next run."""
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    run = runs.latest_complete_run(workspace)
    dataset = workspace / "datasets" / "shapes"
    runs.update_run(run, dataset=str(dataset))
    from ui import common

    at = open_page("pages/1_Dataset.py", workspace, monkeypatch)
    assert at.dataframe[0].value["total"].tolist() == [24, 24, 24]
    next(iter(sorted((dataset / "train" / "circle").glob("*.png")))).unlink()
    (dataset / "train" / "square" / "broken.png").write_bytes(b"not a png")
    common._folder_signature.clear()  # what its 10 s expiry does; the cached scan itself is kept
    at.run()
    assert at.dataframe[0].value["total"].tolist() == [23, 24, 24]
    assert any("1 file skipped" in e.label for e in at.expander)
    next(iter(sorted((dataset / "test" / "triangle").glob("*.png")))).unlink()
    at.button(key="dataset_rescan").click().run()  # at once, without waiting for the expiry
    assert not at.exception and at.dataframe[0].value["total"].tolist() == [23, 24, 23]


def test_dataset_page_applies_the_data_roots_to_the_runs_dataset(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    runs.update_run(runs.latest_complete_run(workspace), dataset=str(workspace / "datasets" / "shapes"))
    monkeypatch.setenv("XAI_DATA_ROOTS", str(tmp_path / "elsewhere"))
    at = open_page("pages/1_Dataset.py", workspace, monkeypatch)
    assert any("outside the folders this dashboard may read" in e.value for e in at.error)
    assert not at.dataframe and not at.get("plotly_chart")


def test_sidebar_lists_unreadable_runs_and_short_run_labels(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    broken = runs.runs_dir(workspace) / "20260101-000000-broken-0000"
    broken.mkdir()
    (broken / runs.RUN_FILE).write_text('{"status": "complete", "created_at": 5}')
    at = open_page("pages/1_Dataset.py", workspace, monkeypatch)
    (warning,) = [w.value for w in at.sidebar.warning]
    assert "1 run folder(s) cannot be read" in warning and "20260101-000000-broken-0000" in warning
    assert "created_at" in warning
    picker = at.sidebar.selectbox[0]
    run = runs.latest_complete_run(workspace)
    (label,) = picker.options
    assert label == f"app-test · {run.meta['test_accuracy']:.3f}"
    assert any(run.id in c.value for c in at.sidebar.caption)


def test_short_run_labels_cut_long_names_and_keep_twins_apart():
    from pathlib import Path

    from core.runs import Run
    from ui.common import short_labels

    long = Run(
        Path("20260101-000000-a-very-long-run-name-for-a-narrow-sidebar-1a2b"),
        {"name": "a-very-long-run-name-for-a-narrow-sidebar", "test_accuracy": 0.5},
    )
    twin_a = Run(Path("20260101-000001-same-aaaa"), {"name": "same", "test_accuracy": 1.0})
    twin_b = Run(Path("20260101-000002-same-bbbb"), {"name": "same"})
    labels = short_labels([long, twin_a, twin_b])
    assert labels[long.id] == "a-very-long-run-n… · 0.500"
    assert labels[twin_a.id] == "same #aaaa · 1.000" and labels[twin_b.id] == "same #bbbb"
