"""AppTest of the Embeddings page: no runs, a run not yet computed (the button), the scatter and its
controls, picking an image without a mouse (the selectbox) shows it with Grad-CAM, the hand-over to the
Explainer, and the cached result on the next visit."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from apptest import images, open_page, plots

from core import embeddings, runs

PAGE = "pages/9_Embeddings.py"


@pytest.fixture
def workspace(app_workspace, tmp_path):
    """A private copy of the app run (its dataset stays where it is), so computing writes only here."""
    (run,) = runs.list_runs(app_workspace)
    shutil.copytree(run.path, runs.runs_dir(tmp_path) / run.id)
    return tmp_path


def _picked(figure: dict) -> str:
    (ring,) = [t for t in figure["data"] if t.get("name") == "picked image"]
    return ring["customdata"][0][0]


def test_no_runs(tmp_path, monkeypatch):
    at = open_page(PAGE, tmp_path, monkeypatch)
    assert any("no complete run" in i.value for i in at.info)
    assert not plots(at)


def test_compute_pick_and_open_in_the_explainer(workspace, monkeypatch):
    at = open_page(PAGE, workspace, monkeypatch)
    assert any("has not been computed yet" in i.value for i in at.info)
    assert not plots(at)
    at.button(key="emb_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (run,) = runs.list_runs(workspace)
    assert embeddings.cache_stamp(run) is not None  # written with the run
    (figure,) = plots(at)
    assert figure["layout"]["xaxis"]["title"]["text"] == "t-SNE 1"
    names = {trace["name"] for trace in figure["data"]}
    assert {n.split(" · ")[0] for n in names} == {"circle", "square", "triangle", "picked image"}
    assert any(" · train" in n for n in names)
    # picking an image with the selectbox: the ring moves there, the image and its Grad-CAM are shown
    picker = at.selectbox(key="emb_image")
    assert _picked(figure) == picker.value
    frame = embeddings.load_cached(run).frame
    path = frame[(frame["split"] == "test") & (frame["path"] != picker.value)]["path"].iloc[-1]
    picker.select(path).run()
    assert not at.exception
    assert _picked(plots(at)[0]) == path
    captions = [img.caption for el in images(at) for img in el.proto.imgs]
    assert captions[0] == path.rsplit("/", 1)[-1] and captions[1].startswith("Grad-CAM for the predicted class")
    assert any(m.value.startswith("**Predicted ") for m in at.markdown)
    # PCA, test images only
    at.radio(key="emb_projection").set_value("pca")
    at.radio(key="emb_splits").set_value("test").run()
    (figure,) = plots(at)
    assert figure["layout"]["xaxis"]["title"]["text"].startswith("PC 1 (")
    assert not any(" · train" in t["name"] for t in figure["data"])
    # open it in the Explainer: the Explainer shows that image
    chosen = at.selectbox(key="emb_image").value
    at.button(key="emb_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["test_image"] == chosen
    # the next visit reads the cache: no compute button
    again = open_page(PAGE, workspace, monkeypatch)
    assert "emb_compute" not in [b.key for b in again.button]
    assert any("read from the cache" in c.value for c in again.caption)


def test_misclassified_points_are_drawn_as_crosses():
    from ui.embeddings import scatter

    frame = pd.DataFrame(
        {
            "path": ["/a.png", "/b.png", "/c.png", "/d.png"],
            "split": ["test", "test", "train", "train"],
            "true_class": ["cat", "cat", "dog", "dog"],
            "pred_class": ["cat", "dog", "dog", "cat"],
            "confidence": [0.9, 0.6, 0.8, 0.7],
            "correct": [True, False, True, False],
            "pca_x": np.arange(4.0),
            "pca_y": np.zeros(4),
            "tsne_x": np.arange(4.0),
            "tsne_y": np.ones(4),
        }
    )
    figure = scatter(frame, "tsne", ["cat", "dog"], {}, "/b.png")
    traces = {t.name: t for t in figure.data}
    assert traces["cat"].marker.symbol == "circle" and traces["cat · misclassified"].marker.symbol == "x"
    assert traces["dog · train · misclassified"].marker.symbol == "x"
    assert traces["dog · train"].marker.opacity < traces["cat"].marker.opacity
    assert (
        traces["cat"].marker.color == traces["cat · misclassified"].marker.color != traces["dog · train"].marker.color
    )
    assert list(traces["picked image"].customdata[0][:1]) == ["/b.png"]
