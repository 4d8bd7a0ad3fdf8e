"""The REST API for real: uvicorn in a subprocess on a free loopback port, called with httpx."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from apptest import bomb, png
from conftest import PROJECT_ROOT
from PIL import Image

from core import feedback, runs

MAX_UPLOAD = 200_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_trained_run, tmp_path_factory):
    """``python -m core.cli_serve serve`` on 127.0.0.1 over a copy of the tiny run's workspace."""
    import shutil

    workspace = tmp_path_factory.mktemp("serve_ws")
    shutil.copytree(tiny_trained_run.path, runs.runs_dir(workspace) / tiny_trained_run.id)
    port = _free_port()
    log = (tmp_path_factory.mktemp("serve_log") / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core.cli_serve",
            "serve",
            "--workspace",
            str(workspace),
            "--run",
            tiny_trained_run.id,
            "--port",
            str(port),
            "--max-upload-mb",
            str(MAX_UPLOAD / 2**20),
            "--max-concurrent-explanations",
            "2",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"The server did not start: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": url, "run": runs.find_run(workspace, tiny_trained_run.id), "workspace": workspace, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def _test_images(run) -> list[tuple[str, bytes, str]]:
    """(file name, bytes, true class) of the run's test images."""
    frame = runs.load_predictions(run)
    return [(Path(p).name, Path(p).read_bytes(), c) for p, c in zip(frame["path"], frame["true_class"], strict=True)]


def _check_prediction(answer: dict, run) -> None:
    assert answer["run_id"] == run.id
    assert set(answer["probabilities"]) == set(run.class_names)
    assert abs(sum(answer["probabilities"].values()) - 1.0) < 1e-3
    assert answer["predicted_class"] == max(answer["probabilities"], key=answer["probabilities"].get)
    assert answer["milliseconds"] > 0
    assert answer["input_size"] == [32, 32]


def test_health_runs_and_docs(server):
    health = httpx.get(f"{server['url']}/health").json()
    assert health["status"] == "ok" and health["runs_loaded"] == [server["run"].id]
    listed = httpx.get(f"{server['url']}/runs").json()
    assert [r["id"] for r in listed] == [server["run"].id]
    assert listed[0]["classes"] == ["circle", "square", "triangle"]
    assert listed[0]["metrics"]["test_accuracy"] == pytest.approx(server["run"].meta["test_accuracy"])
    docs = httpx.get(f"{server['url']}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = httpx.get(f"{server['url']}/openapi.json").json()["paths"]
    assert {"/health", "/runs", "/predict", "/explain", "/feedback"} <= set(paths)


def test_predict_matches_the_runs_own_predictions(server):
    run = server["run"]
    frame = runs.load_predictions(run)
    name, data, _ = _test_images(run)[0]
    answer = httpx.post(f"{server['url']}/predict", files={"file": (name, data, "image/png")}).json()
    _check_prediction(answer, run)
    expected = frame.iloc[0]
    for cls in run.class_names:  # the same model on the same file: the probabilities the run recorded
        assert answer["probabilities"][cls] == pytest.approx(float(expected[f"prob_{cls}"]), abs=1e-4)
    several = httpx.post(
        f"{server['url']}/predict", files=[("files", (n, d, "image/png")) for n, d, _ in _test_images(run)[:3]]
    ).json()
    assert isinstance(several, list) and len(several) == 3
    assert [a["filename"] for a in several] == [n for n, _, _ in _test_images(run)[:3]]
    for item in several:
        _check_prediction(item, run)


def test_explain_overlay_and_raw_map(server):
    run = server["run"]
    name, data, true_class = _test_images(run)[0]
    response = httpx.post(
        f"{server['url']}/explain",
        files={"file": (name, data, "image/png")},
        data={"method": "occlusion", "params": json.dumps({"patch_size": 8}), "class": true_class, "raw": "true"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    _check_prediction(answer, run)
    assert answer["method"] == "occlusion" and answer["explained_class"] == true_class
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"]))))
    assert overlay.shape == (32, 32, 3)
    saliency = np.asarray(answer["saliency"])
    assert saliency.shape == (32, 32) and saliency.min() >= 0 and saliency.max() <= 1 and saliency.max() > 0
    without_raw = httpx.post(f"{server['url']}/explain", files={"file": (name, data)}, timeout=60).json()
    assert "saliency" not in without_raw and without_raw["method"] == "gradcam"
    assert without_raw["explained_class"] == without_raw["predicted_class"]


@pytest.mark.parametrize(
    ("path", "files", "data", "status", "words"),
    [
        ("/predict", {"file": ("x.png", b"not an image at all", "image/png")}, {}, 400, "not an image"),
        ("/predict", {"file": ("x.png", b"", "image/png")}, {}, 400, "empty"),
        ("/predict", {"file": ("big.png", png(400, 400) + b"\0" * MAX_UPLOAD, "image/png")}, {}, 413, "limit"),
        ("/predict", {"file": ("bomb.png", bomb(), "image/png")}, {}, 413, "bomb"),
        ("/predict", {"file": ("x.png", png(40, 30), "image/png")}, {"run": "no-such-run"}, 404, "unknown run"),
        ("/predict", {"file": ("x.png", png(40, 30), "image/png")}, {"run": "../../etc"}, 404, "unknown run"),
        ("/predict", {}, {}, 400, "expected an image"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"method": "magic"}, 400, "unknown method"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"class": "hexagon"}, 400, "unknown class"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"params": "{oops"}, 400, "json"),
        (
            "/explain",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"method": "occlusion", "params": '{"patch_size": 999}'},
            400,
            "patch_size",
        ),
        (
            "/explain",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"method": "gradcam", "params": '{"colour": 1}'},
            400,
            "unknown parameter",
        ),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"alpha": "7"}, 422, "alpha"),
        ("/feedback", {"file": ("x.png", png(40, 30), "image/png")}, {"flag_type": "meh"}, 400, "flag_type"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"class": "²"}, 400, "unknown class"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"class": "-1"}, 400, "unknown class"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"params": "[" * 3000 + "]" * 3000}, 400, "json"),
        (
            "/explain",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"params": '{"a": "' + "x" * 10_001 + '"}'},
            400,
            "at most 10,000 characters",
        ),
        (
            "/feedback",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"flag_type": "shortcut", "params": '{"a": NaN}'},
            400,
            "nan is not a number",
        ),
        (
            "/feedback",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"flag_type": "shortcut", "params": '{"a": 1e999}'},
            400,
            "not a finite number",
        ),
        (
            "/feedback",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"flag_type": "shortcut", "params": "[" * 3000 + "]" * 3000},
            400,
            "nested too deeply",
        ),
        ("/predict", {"file": ("x.png", png(40, 30), "image/png")}, {"run_id": "nope"}, 400, "['run_id']"),
        ("/explain", {"file": ("x.png", png(40, 30), "image/png")}, {"class_name": "dog"}, 400, "['class_name']"),
        (
            "/feedback",
            {"file": ("x.png", png(40, 30), "image/png")},
            {"flag_type": "wrong_prediction", "kind": "x"},
            400,
            "unknown form field(s) ['kind']",
        ),
    ],
)
def test_bad_input_answers_4xx_with_a_message(server, path, files, data, status, words):
    response = httpx.post(f"{server['url']}{path}", files=files or None, data=data, timeout=60)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail.lower(), detail
    assert "traceback" not in response.text.lower()


def test_eight_concurrent_clients_mixing_predict_and_explain(server):
    run = server["run"]
    images = _test_images(run)
    expected = list(runs.load_predictions(run)["pred_class"])  # the run's own predictions, file by file
    methods = ["gradcam", "vanilla_gradients", "occlusion"]

    def client(i: int) -> list[dict]:
        answers = []
        with httpx.Client(base_url=server["url"], timeout=120) as http:
            for k in range(3):
                index = (i + k) % len(images)
                name, data, _ = images[index]
                if (i + k) % 2:
                    method = methods[(i + k) % len(methods)]
                    params = {"patch_size": 8} if method == "occlusion" else {}
                    response = http.post(
                        "/explain",
                        files={"file": (name, data, "image/png")},
                        data={"method": method, "params": json.dumps(params), "raw": "true"},
                    )
                else:
                    response = http.post("/predict", files={"file": (name, data, "image/png")})
                assert response.status_code == 200, response.text
                answers.append({"index": index, **response.json()})
        return answers

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [a for answers in pool.map(client, range(8)) for a in answers]
    assert len(results) == 24
    explained = [a for a in results if "method" in a]
    assert len(explained) == 12
    for answer in results:
        _check_prediction(answer, run)
        assert answer["predicted_class"] == expected[answer["index"]]
    for answer in explained:
        saliency = np.asarray(answer["saliency"])
        assert saliency.shape == (32, 32) and saliency.min() >= 0 and saliency.max() <= 1
        assert answer["explained_class"] == answer["predicted_class"]


def test_feedback_round_trip(server):
    run = server["run"]
    name, data, true_class = _test_images(run)[1]
    response = httpx.post(
        f"{server['url']}/feedback",
        files={"file": (name, data, "image/png")},
        data={
            "flag_type": "implausible_explanation",
            "correct_class": true_class,
            "comment": "the map lights up the corner",
            "method": "gradcam",
            "params": "{}",
            "explained_class": true_class,
        },
    )
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["run_id"] == run.id and stored["source"] == "api" and stored["flag_type"] == "implausible_explanation"
    assert set(stored["probabilities"]) == set(run.class_names)
    listed = httpx.get(f"{server['url']}/feedback", params={"run": run.id}).json()
    assert [f["id"] for f in listed] == [stored["id"]]
    assert feedback.count_flags(server["workspace"]) == 1
    assert feedback.image_path(server["workspace"], stored).read_bytes() == data
    bad = httpx.post(
        f"{server['url']}/feedback",
        files={"file": (name, data, "image/png")},
        data={"flag_type": "wrong_label", "correct_class": "hexagon"},
    )
    assert bad.status_code == 400 and "correct_class" in bad.json()["detail"]


def test_home_shows_the_running_server(server, monkeypatch):
    """Home's Serve section finds the live server ($XAI_API_URL) and names the runs it loaded."""
    from apptest import open_page

    monkeypatch.setenv("XAI_API_URL", server["url"])
    at = open_page(None, server["workspace"], monkeypatch)
    (answer,) = [s.value for s in at.success if "An API server answers" in s.value]
    assert server["url"] in answer and server["run"].id in answer
    assert any(f"-m core serve --workspace {server['workspace']} --run {server['run'].id}" in c.value for c in at.code)


def test_home_says_when_no_server_answers(server, monkeypatch):
    from apptest import open_page

    monkeypatch.setenv("XAI_API_URL", f"http://127.0.0.1:{_free_port()}")
    at = open_page(None, server["workspace"], monkeypatch)
    assert not [s for s in at.success if "An API server answers" in s.value]
    assert any("No API server answers" in c.value for c in at.caption)


def test_a_saved_threshold_decides_the_apis_predicted_class(server):
    """The decision threshold saved on the Evaluation page is the API's too (read at every request)."""
    from core import explorer

    run = server["run"]
    first = run.class_names[0]
    name, data, true_class = next(t for t in _test_images(run) if t[2] != first)
    explorer.save_threshold(run, first, 0.0)  # the first class whenever its probability is >= 0
    try:
        answer = httpx.post(f"{server['url']}/predict", files={"file": (name, data, "image/png")}).json()
        assert answer["predicted_class"] == first
        explained = httpx.post(
            f"{server['url']}/explain", files={"file": (name, data, "image/png")}, data={"method": "gradcam"}
        ).json()
        assert explained["predicted_class"] == first and explained["explained_class"] == first
    finally:
        explorer.clear_threshold(run)
    answer = httpx.post(f"{server['url']}/predict", files={"file": (name, data, "image/png")}).json()
    assert answer["predicted_class"] == max(answer["probabilities"], key=answer["probabilities"].get)
