"""core.distribute and core.multiworker: strategies and precision, MirroredStrategy on two logical CPU devices
against one device, and a real two-process MultiWorkerMirroredStrategy run that loses a worker and resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core import distribute, multiworker, runs
from core.distribute import DistributeError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------
# The cluster description, precision, clean errors


def tf_config(addresses, kind="worker", index=0, **extra) -> str:
    return json.dumps({"cluster": {"worker": addresses, **extra}, "task": {"type": kind, "index": index}})


def test_read_cluster_orders_the_chief_first():
    cluster = multiworker.read_cluster(
        json.dumps({"cluster": {"worker": ["b:1", "c:1"], "chief": ["a:1"]}, "task": {"type": "worker", "index": 1}})
    )
    assert cluster.addresses == ["a:1", "b:1", "c:1"] and cluster.rank == 2 and cluster.size == 3
    assert multiworker.read_cluster(tf_config(["h0:1", "h1:1"], index=0)).rank == 0


@pytest.mark.parametrize(
    "raw, message",
    [
        ("", "needs the cluster in the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), "needs a 'cluster' and a 'task'"),
        (tf_config(["a:1"], ps=["p:1"]), "uses only 'chief' and 'worker' tasks"),
        (tf_config(["a:1", "no-port"]), r"must be a list of 'host:port'"),
        (tf_config(["127.0.0.1:23456", "127.0.0.1:99999"]), r"with a port from 1 to 65535"),
        (tf_config(["127.0.0.1:0"]), r"with a port from 1 to 65535"),
        (tf_config([":2222"]), r"must be a list of 'host:port'"),
        (tf_config(["a:1", "b:1"], index=2), "task 'worker' 2 is not in the cluster"),
    ],
)
def test_a_bad_tf_config_is_refused_with_the_reason(raw, message):
    with pytest.raises(DistributeError, match=message):
        multiworker.read_cluster(raw)


def test_a_worker_whose_peers_never_join_gives_up_with_one_line(tmp_path, tiny_shapes_dir):
    """TensorFlow waits for missing workers without a deadline (holding the interpreter lock, swallowing
    SIGTERM): the watchdog process ends it with the reason after XAI_CLUSTER_CONNECT_SECONDS."""
    ports = free_ports(2)
    env = dict(
        os.environ,
        TF_CONFIG=tf_config([f"127.0.0.1:{p}" for p in ports], index=0),
        XAI_CLUSTER_CONNECT_SECONDS="3",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    command = [
        sys.executable, "-m", "core", "train", "--data", str(tiny_shapes_dir), "--arch", "compact_cnn",
        "--weights", "none", "--img-size", "32", "--epochs", "1", "--strategy", "multiworker",
        "--workspace", str(tmp_path / "ws"),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == -9, done.stderr[-2000:]  # killed by the watchdog: nothing else ends the wait
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "did not assemble within 3 s" in errors[0], done.stderr[-2000:]
    assert f"127.0.0.1:{ports[1]}" in errors[0] and "Traceback" not in done.stderr
    assert time.monotonic() - started < 120
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())  # no run


def test_the_command_line_reports_a_missing_cluster_in_one_line(tmp_path, tiny_shapes_dir, monkeypatch, capsys):
    from core.__main__ import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    args = ["train", "--data", str(tiny_shapes_dir), "--arch", "compact_cnn", "--weights", "none"]
    assert main([*args, "--strategy", "multiworker", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --strategy multiworker needs the cluster") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("TF_CONFIG", "{oops")
    assert main([*args, "--strategy", "multiworker", "--workspace", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: TF_CONFIG is not valid JSON")
    with pytest.raises(SystemExit):
        main([*args, "--strategy", "galaxy"])
    assert "invalid choice: 'galaxy'" in capsys.readouterr().err
    assert runs.list_runs(tmp_path) == []


def test_a_job_passes_the_strategy_precision_and_cache_on():
    from core.jobs import train_args
    from core.training_config import TrainingConfig

    assert not {"--strategy", "--mixed-precision", "--lr-rule", "--cache"} & set(train_args("d", TrainingConfig()))
    args = train_args("d", TrainingConfig(strategy="mirrored", mixed_precision=True, lr_rule="linear", cache=True))
    assert args[-6:] == ["--strategy", "mirrored", "--mixed-precision", "--lr-rule", "linear", "--cache"]
    with pytest.raises(ValueError, match="strategy must be one of"):
        TrainingConfig(strategy="tpu").validate()


def test_the_cpu_cannot_be_split_once_tensorflow_runs():
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # the runtime is up
    with pytest.raises(DistributeError, match="only be split into logical devices before TensorFlow runs its first op"):
        distribute.split_cpu(2)
    with pytest.raises(DistributeError, match="between 1 and 64"):
        distribute.split_cpu(0)


def test_precision_policy(monkeypatch):
    assert distribute.precision_policy(False, on_gpu=True) == ("float32", None)
    assert distribute.precision_policy(True, on_gpu=True) == ("mixed_float16", None)
    monkeypatch.setattr(distribute, "cpu_supports_bfloat16", lambda: False)
    policy, note = distribute.precision_policy(True, on_gpu=False)
    assert policy == "float32" and "no bfloat16 instructions" in note
    monkeypatch.setattr(distribute, "cpu_supports_bfloat16", lambda: True)
    assert distribute.precision_policy(True, on_gpu=False) == ("mixed_bfloat16", None)
    assert distribute.learning_rate_for(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert distribute.learning_rate_for(1e-3, 4, "none") == 1e-3


def test_mixed_precision_trains_in_bfloat16_and_saves_float32(tmp_path, tiny_shapes_dir, monkeypatch):
    """bfloat16 compute (forced here: this CPU lacks the instructions, TensorFlow emulates them), the output
    layer in float32 while training, and a float32 model saved, evaluated and explained."""
    import keras

    from core.explain import explain
    from core.models import load_model
    from core.training import TrainingConfig, build_for, train

    monkeypatch.setattr(distribute, "cpu_supports_bfloat16", lambda: True)
    mixed = build_for(
        TrainingConfig(image_size=32), 3, (32, 32), distribute.make_strategy("one").strategy, "mixed_bfloat16"
    )
    assert mixed.get_layer("avg_pool").compute_dtype == "bfloat16"
    assert mixed.get_layer("logits").compute_dtype == "float32" and mixed.output.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy came back

    config = TrainingConfig(epochs=1, image_size=32, batch_size=8, mixed_precision=True)
    run = train(tmp_path, tiny_shapes_dir, config)
    assert run.is_complete and run.meta["distribution"]["precision"] == "mixed_bfloat16"
    model = load_model(run.model_path)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    maps = explain(model, np.zeros((1, 32, 32, 3), np.float32) + 100, "gradcam", class_index=0)
    assert maps.dtype == np.float32 and maps.shape == (1, 32, 32)
    drift = json.loads(run.file("drift.json").read_text())
    assert drift["error"] is None and drift["epochs"] == [1]  # explained on a float32 copy while training


# ---------------------------------------------------------------------------------------------------
# MirroredStrategy on two logical CPU devices vs one device (a fresh process: devices split first)

MIRRORED_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from core.distribute import split_cpu
split_cpu(2)  # before TensorFlow runs any op
import keras, numpy as np, tensorflow as tf
from core import runs
from core.training import TrainingConfig, train

# 1. The arithmetic: a network without BatchNormalization or dropout, same batches, same start.
def network():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
rng = np.random.default_rng(0)
x, y = rng.uniform(0, 1, (32, 12, 12, 3)).astype("float32"), rng.integers(0, 3, 32).astype("int32")
weights = []
from core.distribute import make_strategy
for strategy in (make_strategy("mirrored").strategy, tf.distribute.get_strategy()):  # the strategy training uses
    with strategy.scope():
        model = network()
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0, shuffle=False)
    weights.append(model.get_weights())
exact = max(float(np.abs(a - b).max()) for a, b in zip(*weights))

# 2. The real thing: core.training on the demo shapes, 4 images per device x 2 devices vs 8 on one device.
out = {"exact": exact}
for strategy, batch in (("mirrored", 4), ("one", 8)):
    run = train(sys.argv[3], sys.argv[2], TrainingConfig(epochs=2, image_size=32, batch_size=batch, strategy=strategy))
    history = runs.load_history(run)
    out[strategy] = {"status": run.status, "distribution": run.meta["distribution"],
                     "loss": history["loss"].tolist(), "val_loss": history["val_loss"].tolist(),
                     "probabilities": runs.load_predictions(run).filter(like="prob_").to_numpy().tolist()}
print(json.dumps(out))
"""


def test_mirrored_on_two_logical_devices_matches_one_device(tmp_path, tiny_shapes_dir):
    """Tolerances, and why: without BatchNormalization or dropout the two replicas' averaged gradients are
    the one device's gradients up to float summation order (1e-5). With them (compact_cnn), each replica
    normalises its own 4 images and draws its own dropout masks, so two epochs drift apart a little: losses
    within 0.15, validation losses within 0.03, test probabilities within 0.1 (measured here: 0.06, 0.003,
    0.02)."""
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(PROJECT_ROOT), str(tiny_shapes_dir), str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["exact"] < 1e-5
    mirrored, one = out["mirrored"], out["one"]
    assert mirrored["status"] == one["status"] == runs.COMPLETE
    assert mirrored["distribution"] == {
        "strategy": "MirroredStrategy",
        "requested": "mirrored",
        "devices": ["/device:CPU:0", "/device:CPU:1"],
        "replicas": 2,
        "workers": 1,
        "batch_size_per_replica": 4,
        "global_batch_size": 8,
        "learning_rate_rule": "none",
        "learning_rate": 1e-3,
        "precision": "float32",
    }
    assert one["distribution"]["strategy"] == "OneDeviceStrategy" and one["distribution"]["replicas"] == 1
    np.testing.assert_allclose(mirrored["loss"], one["loss"], atol=0.15)
    np.testing.assert_allclose(mirrored["val_loss"], one["val_loss"], atol=0.03)
    np.testing.assert_allclose(mirrored["probabilities"], one["probabilities"], atol=0.1)


# ---------------------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two worker processes on loopback ports; one is killed and restarted

EPOCHS = 3


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """Starts and stops the worker processes of one two-worker cluster (by their handles only)."""

    def __init__(self, folder: Path, data_dir: Path):
        self.folder, self.data_dir = folder, data_dir
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, index: int, attempt: str) -> subprocess.Popen:
        env = dict(
            os.environ,
            TF_CONFIG=tf_config(self.addresses, index=index),
            XAI_HEARTBEAT_SECONDS="2",
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        command = [
            sys.executable, "-m", "core", "train", "--data", str(self.data_dir), "--arch", "compact_cnn",
            "--weights", "none", "--img-size", "32", "--epochs", str(EPOCHS), "--batch-size", "4",
            "--strategy", "multiworker", "--workspace", str(self.folder / "ws"),
            "--backup-dir", str(self.folder / "backup"),
        ]  # fmt: skip
        log = open(self.folder / f"worker{index}-{attempt}.log", "w")
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[f"{index}-{attempt}"] = process
        return process

    def log(self, index: int, attempt: str) -> str:
        return (self.folder / f"worker{index}-{attempt}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def resumed_cluster(tmp_path_factory, tiny_shapes_dir):
    """Two workers train; worker 1 is killed once the chief has checkpointed epoch 1; the chief stops with a
    clear error; both are started again (what a cluster manager does) and finish the run from the checkpoint."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), tiny_shapes_dir)
    state = cluster.folder / "backup" / multiworker.STATE_FILE
    timings = {}
    try:
        started = time.monotonic()
        chief, worker = cluster.start(0, "first"), cluster.start(1, "first")
        wait_for(lambda: state.exists() or chief.poll() is not None, 300, "the first checkpoint")
        timings["first_checkpoint_s"] = time.monotonic() - started
        killed_after = json.loads(state.read_text())["epoch"]
        worker.kill()
        worker.wait(timeout=30)
        lost = time.monotonic()
        chief.wait(timeout=120)
        timings["chief_noticed_s"] = time.monotonic() - lost
        first_status = runs.list_runs(cluster.folder / "ws")[0].status
        restarted = time.monotonic()
        again = [cluster.start(0, "again"), cluster.start(1, "again")]
        for process in again:
            process.wait(timeout=400)
        timings["restart_to_complete_s"] = time.monotonic() - restarted
        print(f"multi-worker timings: {timings}")
        yield cluster, killed_after, chief.returncode, first_status, [p.returncode for p in again]
    finally:
        cluster.stop_all()


def test_two_workers_train_one_complete_run(resumed_cluster):
    cluster, _, _, _, returncodes = resumed_cluster
    assert returncodes == [0, 0], cluster.log(0, "again")[-3000:] + cluster.log(1, "again")[-3000:]
    (run,) = runs.list_runs(cluster.folder / "ws")  # one run: only the chief writes it
    assert run.status == runs.COMPLETE and run.model_path.exists()
    assert len(runs.load_predictions(run)) == run.meta["split_counts"]["test"]
    distribution = run.meta["distribution"]
    assert distribution["strategy"] == "MultiWorkerMirroredStrategy" and distribution["workers"] == 2
    assert distribution["replicas"] == 2 and distribution["global_batch_size"] == 8
    assert distribution["cluster"] == cluster.addresses
    assert distribution["devices"] == ["/job:worker/task:0/device:CPU:0", "/job:worker/task:1/device:CPU:0"]
    assert "Worker finished; the chief wrote the run." in cluster.log(1, "again")
    assert not (cluster.folder / "backup").exists()  # checkpoints removed once the run is complete


def test_a_killed_worker_resumes_from_the_checkpoint(resumed_cluster):
    cluster, killed_after, chief_code, first_status, _ = resumed_cluster
    assert killed_after >= 1
    assert chief_code == 2 and first_status == runs.FAILED  # the chief stops, with the reason, and the run says so
    message = [line for line in cluster.log(0, "first").splitlines() if line.startswith("error: ")]
    assert message and message[-1].startswith("error: A worker of the cluster was lost")
    assert "Start every worker again with the same command" in message[-1]
    (run,) = runs.list_runs(cluster.folder / "ws")
    assert run.is_complete and "error" not in run.meta  # the same run, reopened and finished
    resumed = run.meta["resumed_from_epoch"]
    assert len(resumed) == 1 and killed_after <= resumed[0] < EPOCHS  # continued from a checkpoint, not from 0
    history = runs.load_history(run)
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1)) and run.meta["epochs_trained"] == EPOCHS
    assert np.isfinite(history["loss"]).all()
    resumed_lines = [line for line in cluster.log(0, "again").splitlines() if line.startswith("epoch ")]
    assert [line.split("/")[0] for line in resumed_lines] == [f"epoch {e}" for e in range(resumed[0] + 1, EPOCHS + 1)]
