"""The Feedback page and the Explainer's "Flag this" form (AppTest), on a real SQLite store."""

from __future__ import annotations

import numpy as np
import pytest
from apptest import open_page, png
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import feedback

PAGE = "pages/8_Feedback.py"


def _seed(workspace) -> list[int]:
    return [
        feedback.add_flag(
            workspace,
            png(12, 10),
            flag_type="wrong_prediction",
            run_id="run-a",
            correct_class="square",
            predicted_class="circle",
            probabilities={"circle": 0.7, "square": 0.3},
        ),
        feedback.add_flag(workspace, png(14, 10), flag_type="shortcut", run_id="run-a", predicted_class="square"),
        feedback.add_flag(
            workspace, png(16, 10), flag_type="wrong_label", run_id="run-b", correct_class="circle", comment="hm"
        ),
    ]


def test_empty_store_explains_how_to_flag(tmp_path, monkeypatch):
    at = open_page(PAGE, tmp_path, monkeypatch)
    assert "No flags yet" in at.info[0].value and "/feedback" in at.info[0].value


def test_table_counts_filters_export_and_confirmed_delete(tmp_path, monkeypatch):
    ids = _seed(tmp_path)
    at = open_page(PAGE, tmp_path, monkeypatch)
    table = at.dataframe[0].value
    assert list(table["id"]) == ids[::-1]
    assert all(uri.startswith("data:image/png;base64,") for uri in table["image"])
    metrics = {m.label: m.value for m in at.metric}
    assert (
        metrics["Flags shown"] == "3 / 3"
        and metrics["Wrong prediction"] == "1"
        and metrics["Shortcut / artefact"] == "1"
    )

    at.selectbox(key="fb_type").select("wrong_label").run()
    assert list(at.dataframe[0].value["id"]) == [ids[2]]
    assert {m.label: m.value for m in at.metric}["Flags shown"] == "1 / 3"
    at.selectbox(key="fb_type").select("(all)").run()

    at.button(key="fb_export").click().run()
    assert not at.exception
    exported = sorted((tmp_path / "datasets").glob("feedback-*/*/*.png"))
    assert sorted(p.parent.name for p in exported) == ["circle", "square"]
    assert "Exported 2 images" in at.success[0].value

    at.selectbox(key="fb_delete_id").select(ids[1]).run()
    at.button(key="fb_delete").click().run()
    assert f"Delete flag #{ids[1]}?" in at.warning[0].value
    assert feedback.count_flags(tmp_path) == 3  # nothing deleted before the confirmation
    at.button(key="fb_delete_no").click().run()
    assert feedback.count_flags(tmp_path) == 3 and not at.warning
    at.button(key="fb_delete").click().run()
    at.button(key="fb_delete_yes").click().run()
    assert not at.exception
    assert sorted(f["id"] for f in feedback.list_flags(tmp_path)) == [ids[0], ids[2]]
    assert list(at.dataframe[0].value["id"]) == [ids[2], ids[0]]


def _flag_form_script(workspace: str):
    from pathlib import Path

    import numpy as np

    from core import runs
    from ui.serving import render_flag_form

    run = runs.Run(Path(workspace) / "runs" / "run-x", {"class_names": ["circle", "square", "triangle"]})
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:6, 2:6] = 255
    render_flag_form(run, image, np.array([0.2, 0.7, 0.1]), "gradcam", {"layer_name": "conv"}, 1)


def test_flag_form_stores_a_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_WORKSPACE", str(tmp_path))
    at = AppTest.from_function(_flag_form_script, args=(str(tmp_path),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    key = next(r.key for r in at.radio)
    at.radio(key=key).set_value("implausible_explanation")
    at.selectbox(key=key.replace("_type", "_class")).select("triangle")
    at.text_area(key=key.replace("_type", "_comment")).input("lights up the border")
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Flag #1 stored" in at.success[0].value
    (flag,) = feedback.list_flags(tmp_path)
    assert flag["run_id"] == "run-x" and flag["flag_type"] == "implausible_explanation"
    assert flag["correct_class"] == "triangle" and flag["comment"] == "lights up the border"
    assert flag["predicted_class"] == "square" and flag["explained_class"] == "square"
    assert flag["probabilities"] == {"circle": 0.2, "square": 0.7, "triangle": 0.1}
    assert flag["method"] == "gradcam" and flag["params"] == {"layer_name": "conv"} and flag["source"] == "dashboard"
    stored = np.asarray(Image.open(feedback.image_path(tmp_path, flag)))
    assert stored.shape == (8, 8, 3) and stored[3, 3].tolist() == [255, 255, 255]


def _flag_form_with_truth(workspace: str, true_class):
    from pathlib import Path

    import numpy as np

    from core import runs
    from ui.serving import render_flag_form

    run = runs.Run(Path(workspace) / "runs" / "run-x", {"class_names": ["circle", "square", "triangle"]})
    image = np.zeros((8, 8, 3), np.uint8)
    render_flag_form(run, image, np.array([0.2, 0.7, 0.1]), "gradcam", {}, 1, true_class=true_class)


@pytest.mark.parametrize(
    "true_class, expected",
    [
        ("square", "implausible_explanation"),  # predicted square, and it is a square: the map is what to doubt
        (1, "implausible_explanation"),  # the true class as an index
        ("circle", "wrong_prediction"),
        (None, "wrong_prediction"),  # no known true class: as before
    ],
)
def test_flag_form_defaults_to_the_likely_flag_type(tmp_path, monkeypatch, true_class, expected):
    monkeypatch.setenv("XAI_WORKSPACE", str(tmp_path))
    at = AppTest.from_function(_flag_form_with_truth, args=(str(tmp_path), true_class), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    (radio,) = at.radio
    assert radio.value == expected
    at.button[0].click().run()
    (flag,) = feedback.list_flags(tmp_path)
    assert flag["flag_type"] == expected and flag["method"] == "gradcam"


def test_the_flag_form_predicts_as_the_runs_saved_threshold_does(tmp_path, monkeypatch):
    """Square is the most probable (0.7), but the run's saved threshold predicts circle from 0.15 on: the form
    stores circle as the prediction and, the true class being circle, offers "Implausible explanation"."""
    run_dir = tmp_path / "runs" / "run-x"
    run_dir.mkdir(parents=True)
    (run_dir / "threshold.json").write_text('{"class": "circle", "threshold": 0.15}')
    monkeypatch.setenv("XAI_WORKSPACE", str(tmp_path))
    at = AppTest.from_function(_flag_form_with_truth, args=(str(tmp_path), "circle"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio[0].value == "implausible_explanation"
    at.button[0].click().run()
    (flag,) = feedback.list_flags(tmp_path)
    assert flag["predicted_class"] == "circle"
