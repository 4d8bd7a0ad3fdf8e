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
    dataset = tmp_path / "imbalanced"
    shutil.copytree(run.meta["dataset"], dataset)
    for path in sorted((dataset / "train" / "circle").glob("*.png"))[:12]:
        path.unlink()
    copy = tmp_path / "ws"
    shutil.copytree(app_workspace, copy)
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
    assert any("1 files skipped" in e.label for e in at.expander)
    at.text_input(key="dataset_folder").set_value("/").run()
    assert any("outside the folders" in e.value for e in at.error)
