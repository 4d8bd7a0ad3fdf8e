"""AppTest of the "Inside the model" page: feature-map tiles, layer switching, class visualisation that
finishes and that stops, on the demo-like run and on an imported model with a nested backbone."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
from apptest import images, open_page, plots, png
from keras import layers
from streamlit.testing.v1 import AppTest

PAGE = "pages/6_Inside_the_model.py"


def _inside(workspace, monkeypatch) -> AppTest:
    return open_page(PAGE, workspace, monkeypatch)


def _image_lists(at: AppTest) -> list:
    """Each st.image call's pictures: a list of captions per call."""
    return [[img.caption for img in el.proto.imgs] for el in images(at)]


def _tile_captions(at: AppTest) -> list[str]:
    return [c for captions in _image_lists(at) for c in captions if c.startswith("#")]


def _wait_for_result(at: AppTest, timeout: float = 180.0) -> AppTest:
    deadline = time.monotonic() + timeout
    while not at.success:
        assert time.monotonic() < deadline, "the class visualisation did not finish in time"
        assert not at.exception, [e.value for e in at.exception]
        time.sleep(0.2)
        at.run()
    return at


def test_tiles_for_the_run_strongest_channel_first(app_workspace, monkeypatch):
    at = _inside(app_workspace, monkeypatch)
    assert not at.error
    assert at.selectbox(key="inside_layer").value == "top_conv"
    assert any(m.value.startswith("**Top 16 of 64 channels by mean activation**") for m in at.markdown)
    captions = _tile_captions(at)
    assert len(captions) == 16
    means = [float(c.split(" · ")[1]) for c in captions]  # "#channel · mean"
    assert means == sorted(means, reverse=True)
    table = at.dataframe[0].value
    assert list(table["rank"]) == list(range(1, 17))
    assert [f"#{c}" for c in table["channel"]] == [c.split(" · ")[0] for c in captions]
    assert np.all(np.diff(table["mean"].to_numpy()) <= 0)
    assert len(at.get("download_button")) == 1
    assert not at.success  # nothing is visualised until asked


def test_switching_layer_and_tile_count(app_workspace, monkeypatch):
    at = _inside(app_workspace, monkeypatch)
    at.selectbox(key="inside_layer").select("block1_relu").run()
    assert not at.exception
    assert any(m.value.startswith("**Top 16 of 16 channels") for m in at.markdown)
    assert any("`block1_relu`: 48x48 positions, 16 channels" in c.value for c in at.caption)
    at.slider(key="inside_tiles").set_value(5).run()
    assert len(_tile_captions(at)) == 5
    at.selectbox(key="inside_layer").select("block3_pool").run()  # 64 channels at 6x6
    assert len(_tile_captions(at)) == 5 and any("6x6 positions, 64 channels" in c.value for c in at.caption)


def test_tiles_for_an_uploaded_image(app_workspace, monkeypatch):
    at = _inside(app_workspace, monkeypatch)
    at.radio(key="inside_image_source").set_value("Upload").run()
    at.file_uploader(key="inside_upload").set_value(("grey.png", png(90, 60), "image/png")).run()
    assert not at.exception and not at.error
    assert len(_tile_captions(at)) == 16


def test_a_short_class_visualisation_finishes_and_shows_its_image(app_workspace, monkeypatch):
    at = _inside(app_workspace, monkeypatch)
    at.selectbox(key="viz_class").select("square")
    at.number_input(key="viz_steps").set_value(6)
    at.button(key="viz_start_button").click().run()
    assert not at.exception
    _wait_for_result(at)
    (message,) = [s.value for s in at.success]
    assert message.startswith("Finished 6 of 6 steps") and "score of square (before softmax)" in message
    assert any(c and "score of square" in c for captions in _image_lists(at) for c in captions)
    assert any(c.value.startswith("Settings: 6 steps · learning rate 4 px/step · jitter 2 px") for c in at.caption)
    (curve,) = plots(at)  # the score at each step
    assert curve["layout"]["xaxis"]["title"]["text"] == "step"
    assert not at.button(key="viz_start_button").disabled


def test_a_channel_visualisation_can_be_stopped(app_workspace, monkeypatch):
    at = _inside(app_workspace, monkeypatch)
    at.radio(key="viz_target").set_value("A channel of a layer").run()
    at.selectbox(key="viz_layer").select("block2_relu").run()
    at.number_input(key="viz_channel").set_value(31)
    at.number_input(key="viz_steps").set_value(2000)
    at.button(key="viz_start_button").click().run()
    assert at.button(key="inside_stop")
    at.button(key="inside_stop").click().run()
    _wait_for_result(at)
    (message,) = [s.value for s in at.success]
    assert message.startswith("Stopped after") and "of 2000 steps" in message
    assert int(message.split()[2]) < 2000
    assert "mean activation of channel 31 of block2_relu" in message


def test_start_is_disabled_while_a_visualisation_runs_and_a_second_click_starts_nothing(app_workspace, monkeypatch):
    at = _inside(app_workspace, monkeypatch)
    assert not at.button(key="viz_start_button").disabled
    at.number_input(key="viz_steps").set_value(2000)
    at.button(key="viz_start_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["inside_job"]
    assert job.running
    assert at.button(key="viz_start_button").disabled  # drawn again after the start: no second start
    assert at.button(key="inside_stop")  # Stop stays available
    # A double click: the browser sent the second click before it drew the disabled button, so the click
    # reaches a run in which the job already runs.
    stale = at.button(key="viz_start_button")
    stale.proto.disabled = False
    stale.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["inside_job"] is job and job.running and not job.stop_event.is_set()
    assert at.button(key="viz_start_button").disabled
    at.button(key="inside_stop").click().run()
    _wait_for_result(at)
    assert at.session_state["inside_job"] is job
    assert not at.button(key="viz_start_button").disabled


def test_start_job_never_restarts_a_running_or_just_started_job(monkeypatch):
    import threading

    from ui import inside as ui_inside

    class Run:
        id, class_names = "r", ["a"]

    state: dict = {}
    monkeypatch.setattr(ui_inside.st, "session_state", state)
    release = threading.Event()
    running = ui_inside.VisualizationJob("r", None, thread=threading.Thread(target=release.wait, daemon=True))
    running.thread.start()
    state[ui_inside.JOB] = running
    try:
        assert ui_inside.start_job(Run(), None, None) == (running, False)
    finally:
        release.set()
        running.thread.join(5)
    assert ui_inside.start_job(Run(), None, None) == (running, False)  # ended, but started a moment ago
    assert state[ui_inside.JOB] is running


# ---- an imported model with a nested backbone -----------------------------------------------------


@pytest.fixture(scope="module")
def imported_workspace(tmp_path_factory, tiny_shapes_dir):
    """A workspace with one run imported from a .keras model whose convolutions sit in a nested backbone."""
    from core.model_import import import_run

    keras.utils.set_random_seed(4)
    inner_in = keras.Input((32, 32, 3), name="backbone_in")
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inner_in)
    x = layers.Conv2D(10, 3, strides=2, padding="same", activation="relu", name="deep")(x)
    backbone = keras.Model(inner_in, x, name="feature_extractor")
    inputs = keras.Input((32, 32, 3))
    outputs = layers.Dense(3, name="scores")(layers.GlobalAveragePooling2D()(backbone(inputs)))
    root = tmp_path_factory.mktemp("imported_ws")
    path = root / "nested.keras"
    keras.Model(inputs, outputs, name="user_model").save(path)
    run = import_run(root / "workspace", path, tiny_shapes_dir, "unit", name="nested")
    assert run.is_complete
    return root / "workspace"


def test_imported_nested_model(imported_workspace, monkeypatch):
    at = _inside(imported_workspace, monkeypatch)
    assert not at.error
    assert at.selectbox(key="inside_layer").options == ["stem", "deep"]
    assert any(m.value.startswith("**Top 10 of 10 channels") for m in at.markdown)
    at.selectbox(key="inside_layer").select("stem").run()
    assert len(_tile_captions(at)) == 6
    at.number_input(key="viz_steps").set_value(4)
    at.button(key="viz_start_button").click().run()
    _wait_for_result(at)
    assert at.success[0].value.startswith("Finished 4 of 4 steps")
