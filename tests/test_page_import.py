"""AppTest of the Import page against a small prepared run."""

from __future__ import annotations

from apptest import open_page


def _save_models(tmp_path):
    import keras
    from keras import layers

    inputs = keras.Input((48, 48, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    good = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    good.save(tmp_path / "good.keras")
    bad = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    bad.save(tmp_path / "two_classes.keras")
    return tmp_path / "good.keras", tmp_path / "two_classes.keras"


def test_import_page_uploads_a_model_and_refuses_a_mismatch(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    good, mismatched = _save_models(tmp_path)
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    data = str(workspace / "datasets" / "shapes")  # the copy, inside this workspace (a data root)
    at = open_page("pages/5_Import_model.py", workspace, monkeypatch)
    at.file_uploader(key="model_upload").set_value(
        ("two_classes.keras", mismatched.read_bytes(), "application/octet-stream")
    ).run()
    at.text_input(key="import_data").set_value(data).run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert any("predicts 2 classes but the data has 3" in e.value for e in at.error)
    at.file_uploader(key="model_upload").set_value(("notes.keras", b"a text file", "application/octet-stream")).run()
    at.button(key="import_button").click().run()
    assert any("notes.keras is not a readable Keras model file" in e.value for e in at.error)
    assert len(list(runs.runs_dir(workspace).iterdir())) == 1  # failed imports leave no run folder
    at.file_uploader(key="model_upload").set_value(("good.keras", good.read_bytes(), "application/octet-stream")).run()
    at.button(key="import_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Imported as run" in s.value for s in at.success)
    imported = [r for r in runs.list_runs(workspace) if r.meta.get("source") == "imported" and r.is_complete]
    assert len(imported) == 1 and imported[0].meta["preprocessing"] == "raw"
    assert imported[0].meta["imported_from"] == "good.keras (uploaded)"
    listed = [m.value for m in at.markdown if imported[0].id in m.value]
    assert listed and "good.keras (uploaded)" in listed[0] and "/tmp" not in listed[0]


def test_import_page_says_the_upload_limit(app_workspace, monkeypatch):
    at = open_page("pages/5_Import_model.py", app_workspace, monkeypatch)
    uploader = at.get("file_uploader")[0]
    assert "at most 50 MB" in uploader.proto.label and uploader.proto.max_upload_size_mb == 50
    assert at.title[0].value == "Import model"  # as the sidebar names the page


def test_import_page_takes_a_model_file_path(app_workspace, monkeypatch, tmp_path):
    import shutil

    from core import runs

    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace)
    good, _ = _save_models(workspace)  # inside the workspace: a data root
    at = open_page("pages/5_Import_model.py", workspace, monkeypatch)
    at.radio(key="import_kind").set_value("A file or SavedModel folder on this machine").run()
    at.text_input(key="model_path").set_value(str(good)).run()
    at.text_input(key="import_data").set_value(str(workspace / "datasets" / "shapes")).run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="import_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Imported as run" in s.value for s in at.success)
    assert any(r.meta.get("imported_from") == str(good.resolve()) for r in runs.list_runs(workspace))
    at.text_input(key="model_path").set_value(str(workspace / "notes.txt")).run()
    assert any("does not exist" in e.value for e in at.error)
