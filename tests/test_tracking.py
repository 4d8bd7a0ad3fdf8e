"""MLflow tracking against real local MLflow stores, read back with MLflow's own client: a tracked training
run (params, per-epoch metrics logged live, final metrics, artifacts, the Keras model), logging again,
the CLI flag end to end, import-model --mlflow, an unreachable server, bad URIs, a file store with the
.keras fallback, and the Training page's switch and link.

A new SQLite store runs MLflow's migrations (about 7 s): one blank store is migrated once per module and
copied wherever a test needs a fresh one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import jobs, runs, tracking
from core.training import TrainingConfig, train

PROJECT_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's own
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


@pytest.fixture(scope="module")
def blank_store(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database (copy it: `fresh_store`)."""
    database = tmp_path_factory.mktemp("blank_store") / tracking.DB_FILE
    tracking.connect(f"sqlite:///{database}")
    return database


def fresh_store(blank_store: Path, folder: Path) -> str:
    """A copy of the blank store in ``folder``; its tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blank_store, folder / tracking.DB_FILE)
    return f"sqlite:///{folder / tracking.DB_FILE}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def milliseconds(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


@pytest.fixture(scope="module")
def cli_train(tmp_path_factory, tiny_shapes_dir):
    """``python -m core train ... --mlflow`` (the workspace's own store, created by it), started in the
    background first: it runs while the in-process tests do. `test_cli_train_with_mlflow_end_to_end` waits."""
    workspace = tmp_path_factory.mktemp("cli_ws")
    process = subprocess.Popen(
        [sys.executable, "-m", "core", "train", "--data", str(tiny_shapes_dir), "--arch", "compact_cnn"]
        + ["--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8"]
        + ["--workspace", str(workspace), "--mlflow"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield workspace, process
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_shapes_dir, blank_store, cli_train):
    """A compact CNN trained 2 + 1 (fine-tuning) epochs with tracking on, into the workspace's default store
    (asks for `cli_train` only to start it first)."""
    workspace = tmp_path_factory.mktemp("tracked_ws")
    dataset = shutil.copytree(tiny_shapes_dir, workspace / "datasets" / "shapes")  # inside the page's data roots
    uri = fresh_store(blank_store, tracking.store_dir(workspace))
    assert uri == tracking.default_uri(workspace)
    tracker = tracking.RunTracker(None, workspace)
    config = TrainingConfig(arch="compact_cnn", image_size=32, epochs=2, fine_tune_epochs=1, batch_size=8, seed=0)
    run = train(workspace, dataset, config, name="tracked", extra_callbacks=tracker.callbacks)
    result = tracker.finish()
    assert tracker.error is None and result is not None
    return {"run": runs.read_run(run.path), "result": result, "uri": uri, "workspace": workspace}


@pytest.fixture
def run_copy(tracked, tmp_path) -> runs.Run:
    """A private copy of the tracked run, in its own workspace, its MLflow record removed."""
    target = runs.runs_dir(tmp_path / "ws") / tracked["run"].id
    shutil.copytree(tracked["run"].path, target)
    meta = json.loads((target / runs.RUN_FILE).read_text())
    del meta["mlflow"]
    (target / runs.RUN_FILE).write_text(json.dumps(meta))
    return runs.read_run(target)


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def logged_models(client, mlflow_run):
    return [
        m
        for m in client.search_logged_models(experiment_ids=[mlflow_run.info.experiment_id])
        if m.source_run_id == mlflow_run.info.run_id
    ]


# ---------------------------------------------------------------------------------------------------
# A tracked training run, read back


def test_a_tracked_run_records_its_mlflow_run_in_run_json(tracked):
    run, result = tracked["run"], tracked["result"]
    assert run.is_complete
    record = run.meta["mlflow"]
    assert record["run_id"] == result["mlflow_run_id"]
    assert record["tracking_uri"] == result["tracking_uri"] == tracked["uri"]
    assert record["experiment_id"] == result["experiment_id"] and record["live"] is True
    assert "error" not in record and not run.meta["warnings"]
    assert result["ui_url"] is None and "mlflow ui --backend-store-uri" in result["ui_command"]
    link = tracking.link(run)
    assert link["url"].endswith(f"#/experiments/{record['experiment_id']}/runs/{record['run_id']}")


def test_params_are_the_hyper_parameters_and_the_data(tracked):
    run = tracked["run"]
    mlflow_run = client_for(tracked["uri"]).get_run(tracked["result"]["mlflow_run_id"])
    params = mlflow_run.data.params
    for key, value in run.meta["hyperparameters"].items():
        assert params[key] == str(value), key
    assert params["arch"] == "compact_cnn" and params["epochs"] == "2" and params["fine_tune_epochs"] == "1"
    assert params["image_size"] == "32" and params["batch_size"] == "8" and params["learning_rate"] == "0.001"
    assert json.loads(params["class_names"]) == ["circle", "square", "triangle"] and params["num_classes"] == "3"
    assert (params["split_train"], params["split_val"], params["split_test"]) == ("24", "6", "6")
    assert params["dataset"] == run.meta["dataset"] and params["input_size"] == "32x32"
    assert params["preprocessing"] == "unit" and params["source"] == "trained"
    assert mlflow_run.info.run_name == run.id and mlflow_run.data.tags["xai.run_id"] == run.id
    assert mlflow_run.info.status == "FINISHED"


def test_every_epoch_was_logged_live_with_its_history_values(tracked):
    run = tracked["run"]
    client = client_for(tracked["uri"])
    history = runs.load_history(run)
    assert len(history) == run.meta["epochs_trained"] == 3
    finished = milliseconds(run.meta["finished_at"])
    for key in EPOCH_METRICS:
        logged = sorted(client.get_metric_history(tracked["result"]["mlflow_run_id"], key), key=lambda m: m.step)
        assert [m.step for m in logged] == [1, 2, 3], key  # once per epoch, through the fine-tuning phase
        np.testing.assert_allclose([m.value for m in logged], history[key].to_numpy(), rtol=1e-6)
        assert max(m.timestamp for m in logged) <= finished  # logged while training, not afterwards


def test_final_metrics_equal_metrics_json(tracked):
    run = tracked["run"]
    logged = client_for(tracked["uri"]).get_run(tracked["result"]["mlflow_run_id"]).data.metrics
    metrics = runs.load_metrics(run)
    assert logged["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert logged["test/roc_auc_macro"] == pytest.approx(metrics["roc_auc_macro"])
    assert logged["test/macro_avg/f1"] == pytest.approx(metrics["macro_avg"]["f1"])
    assert logged["test/ece"] == pytest.approx(metrics["ece"])
    for name, values in metrics["per_class"].items():
        assert logged[f"test/per_class/{name}/recall"] == pytest.approx(values["recall"])
    expected = tracking.final_metrics(metrics)
    assert len(expected) > 30 and all(logged[k] == pytest.approx(v) for k, v in expected.items())
    assert logged["epochs_trained"] == 3 and logged["best_epoch"] == run.meta["best_epoch"]


def test_artifacts_hold_run_json_confusion_matrix_roc_and_the_model(tracked, tmp_path):
    client = client_for(tracked["uri"])
    run, run_id = tracked["run"], tracked["result"]["mlflow_run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"run.json", "metrics.json", "history.csv", "evaluation"} <= top
    evaluation = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
    assert {"confusion_matrix.png", "confusion_matrix.csv", "roc_curves.png", "roc_curves.json"} <= evaluation
    folder = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    assert json.loads((folder / "run.json").read_text())["mlflow"]["run_id"] == run_id
    assert (folder / "evaluation" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matrix = pd.read_csv(folder / "evaluation" / "confusion_matrix.csv", index_col=0)
    assert matrix.to_numpy().tolist() == runs.load_metrics(run)["confusion_matrix"]
    roc = json.loads((folder / "evaluation" / "roc_curves.json").read_text())
    assert set(roc) == {"circle", "square", "triangle"}
    assert roc["circle"]["auc"] == pytest.approx(runs.load_metrics(run)["per_class"]["circle"]["roc_auc"])
    # The model: an MLflow Keras model linked to the run (MLflow 3 keeps it outside the run's artifacts).
    (model,) = logged_models(client, client.get_run(run_id))
    assert tracked["result"]["model_uri"] == f"models:/{model.model_id}"
    assert tracked["result"]["model_logged_as"].startswith("mlflow.keras")
    files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert "MLmodel" in files


def test_the_logged_model_predicts_as_the_run_does(tracked):
    import mlflow.keras

    from core.models import load_model

    run = tracked["run"]
    client = client_for(tracked["uri"])
    (model,) = logged_models(client, client.get_run(tracked["result"]["mlflow_run_id"]))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    mlflow_model = mlflow.keras.load_model(model.artifact_location)
    np.testing.assert_allclose(
        np.asarray(mlflow_model(images)), np.asarray(load_model(run.model_path)(images)), atol=1e-5
    )


def test_logging_again_reuses_the_mlflow_run_and_adds_nothing(tracked):
    client = client_for(tracked["uri"])
    again = tracking.log_run(tracked["run"])
    assert again["mlflow_run_id"] == tracked["result"]["mlflow_run_id"]
    assert again["model_uri"] == tracked["result"]["model_uri"]
    assert len(client.get_metric_history(again["mlflow_run_id"], "loss")) == 3
    assert len(client.get_metric_history(again["mlflow_run_id"], "test/accuracy")) == 1
    assert len(logged_models(client, client.get_run(again["mlflow_run_id"]))) == 1


# ---------------------------------------------------------------------------------------------------
# The command line


def test_the_mlflow_flag_parses_with_and_without_a_uri():
    from core.__main__ import build_parser

    parse = lambda *extra: build_parser().parse_args(["train", "--data", "d", *extra]).mlflow  # noqa: E731
    assert parse() is None and parse("--mlflow") == "default"
    assert parse("--mlflow", "sqlite:///x.db") == "sqlite:///x.db" and parse("--mlflow=http://h:1") == "http://h:1"
    assert parse("--mlflow", "--epochs", "2") == "default"
    args = build_parser().parse_args(["import-model", "m.keras", "--data", "d", "--preprocess", "unit", "--mlflow"])
    assert args.mlflow == "default"


def test_cli_train_with_mlflow_end_to_end(cli_train):
    workspace, process = cli_train
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    (run,) = runs.list_runs(workspace)
    uri = tracking.default_uri(workspace)
    mlflow_run_id = run.meta["mlflow"]["run_id"]
    assert run.meta["mlflow"]["tracking_uri"] == uri and (workspace / "mlflow" / "mlflow.db").is_file()
    assert f"MLflow run {mlflow_run_id} (experiment 1) at {uri}" in out and "MLflow model: mlflow.keras" in out
    mlflow_run = client_for(uri).get_run(mlflow_run_id)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["epochs"] == "1"
    assert [m.step for m in client_for(uri).get_metric_history(mlflow_run_id, "val_loss")] == [1]
    assert mlflow_run.data.metrics["test/accuracy"] == pytest.approx(run.meta["test_accuracy"])
    artifacts = client_for(uri).list_artifacts(mlflow_run_id)
    assert artifacts[0].path and str(workspace / "mlflow" / "artifacts") in mlflow_run.info.artifact_uri


def test_import_model_with_mlflow(tiny_shapes_dir, blank_store, tmp_path, capsys):
    import keras
    from keras import layers

    from core.__main__ import main

    inputs = keras.Input((32, 32, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu")(inputs))
    keras.Model(inputs, layers.Dense(3, activation="softmax")(x)).save(tmp_path / "mine.keras")
    uri = fresh_store(blank_store, tmp_path / "store")
    code = main(
        ["import-model", str(tmp_path / "mine.keras"), "--data", str(tiny_shapes_dir), "--preprocess", "unit"]
        + ["--workspace", str(tmp_path / "ws"), "--mlflow", uri]
    )
    out = capsys.readouterr().out
    assert code == 0
    (run,) = runs.list_runs(tmp_path / "ws")
    mlflow_run = client_for(uri).get_run(run.meta["mlflow"]["run_id"])
    assert f"MLflow run {mlflow_run.info.run_id}" in out
    assert mlflow_run.data.params["source"] == "imported" and mlflow_run.data.params["preprocessing"] == "unit"
    assert mlflow_run.data.params["imported_from"] == str((tmp_path / "mine.keras").resolve())
    assert mlflow_run.data.metrics["test/accuracy"] == pytest.approx(run.meta["test_accuracy"])
    assert "loss" not in mlflow_run.data.metrics  # no training, no epochs
    assert {"run.json", "evaluation"} <= {a.path for a in client_for(uri).list_artifacts(mlflow_run.info.run_id)}
    assert len(logged_models(client_for(uri), mlflow_run)) == 1


# ---------------------------------------------------------------------------------------------------
# Failures: never the training run's


def test_an_unreachable_server_costs_nothing_but_a_warning(tiny_shapes_dir, tmp_path, capsys):
    from core.__main__ import main

    uri = f"http://127.0.0.1:{closed_port()}"
    code = main(
        ["train", "--data", str(tiny_shapes_dir), "--arch", "compact_cnn", "--weights", "none", "--img-size", "32"]
        + ["--epochs", "1", "--batch-size", "8", "--workspace", str(tmp_path), "--mlflow", uri]
    )
    err = capsys.readouterr().err
    assert code == 0  # the run is complete: tracking failing is a warning
    (run,) = runs.list_runs(tmp_path)
    assert run.is_complete and run.model_path.exists() and run.meta["test_accuracy"] is not None
    told = [line for line in err.splitlines() if line.startswith("warning: MLflow tracking failed")]
    assert len(told) == 1  # told once, though it failed when training started and when it ended
    assert f"Cannot reach the MLflow tracking server at {uri} ([Errno 111] Connection refused)" in told[-1]
    (warning,) = [w for w in run.meta["warnings"] if w.startswith("MLflow tracking failed")]  # once, not twice
    assert f"log it again with: python -m core mlflow-log {run.id} --uri '{uri}'" in warning
    assert "Connection refused" in run.meta["mlflow"]["error"]
    with pytest.raises(ValueError, match="Cannot reach the MLflow tracking server"):
        tracking.log_run(run, uri)
    code = main(["mlflow-log", run.id, "--uri", uri, "--workspace", str(tmp_path)])
    assert code == 2 and "error: Cannot reach the MLflow tracking server" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://example.org/store", "Unknown MLflow tracking URI scheme 'ftp'"),
        ("sqlite:////proc/no-such-folder/mlflow.db", "cannot be created"),
    ],
)
def test_bad_uris_get_clear_messages(run_copy, uri, message):
    with pytest.raises(ValueError, match=message):
        tracking.log_run(run_copy, uri)
    assert "mlflow" not in runs.read_run(run_copy.path).meta


def test_a_run_still_training_is_refused(run_copy):
    running = runs.update_run(run_copy, status=runs.RUNNING)
    with pytest.raises(ValueError, match="still training"):
        tracking.log_run(running, "sqlite:///unused.db")


def test_a_file_store_and_the_keras_file_fallback(run_copy, tmp_path, monkeypatch):
    def no_flavour(session, run):
        raise RuntimeError("no Keras flavour here")

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # set by tracking for file stores; restored
    monkeypatch.setattr(tracking, "_log_keras_flavour", no_flavour)
    result = tracking.log_run(run_copy, f"file://{tmp_path / 'mlruns'}")
    assert result["tracking_uri"] == (tmp_path / "mlruns").as_uri()
    assert result["model_logged_as"] == "artifact model/model.keras"
    assert "no Keras flavour here" in result["model_note"] and "logged as an artifact" in result["model_note"]
    client = client_for(result["tracking_uri"])
    assert {"run.json", "model", "evaluation"} <= {a.path for a in client.list_artifacts(result["mlflow_run_id"])}
    assert [a.path for a in client.list_artifacts(result["mlflow_run_id"], "model")] == ["model/model.keras"]
    assert client.get_run(result["mlflow_run_id"]).data.params["arch"] == "compact_cnn"


# ---------------------------------------------------------------------------------------------------
# The Training page


def test_the_training_page_links_the_run_and_passes_the_switch_to_its_job(tracked, monkeypatch):
    from apptest import open_page

    started = []

    class FakeProcess:
        pid = os.getpid()

    def fake_start(args, workspace, log_name, lock_path=None):
        started.append(list(args))
        return FakeProcess()

    monkeypatch.setattr(jobs, "start", fake_start)
    at = open_page("pages/2_Training.py", tracked["workspace"], monkeypatch)
    mlflow_run_id = tracked["result"]["mlflow_run_id"]
    assert any(f"MLflow run [`{mlflow_run_id}`](http://127.0.0.1:5000/#/" in c.value for c in at.caption)
    at.checkbox(key="train_mlflow").check()
    at.text_input(key="train_mlflow_uri").set_value("sqlite:///elsewhere/mlflow.db")
    at.number_input(key="train_epochs").set_value(1)
    (button,) = [b for b in at.button if b.key and b.key.startswith("start_")]
    button.click().run()
    assert not at.exception and len(started) == 1
    assert "--mlflow=sqlite:///elsewhere/mlflow.db" in started[0] and started[0][0] == "train"


def test_the_evaluation_page_links_the_mlflow_run_beside_the_report(tracked, monkeypatch):
    from apptest import open_page

    at = open_page("pages/3_Evaluation.py", tracked["workspace"], monkeypatch)
    mlflow_run_id = tracked["result"]["mlflow_run_id"]
    assert not at.exception
    assert any(f"MLflow run [`{mlflow_run_id}`](http://127.0.0.1:5000/#/" in c.value for c in at.caption)
