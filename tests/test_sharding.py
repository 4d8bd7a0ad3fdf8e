"""core.sharding: every item once across replicas and workers, results gathered in order; the audit and batch
explanations sharded over two logical CPU devices and over two worker processes equal the one-device result;
bad distribution options end in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from test_cli import cli, run_main
from test_distribute import PROJECT_ROOT, free_ports, tf_config

from core import runs, sharding

AUDIT_ARGS = ("--batch-size", "2", "--agreement-images", "0", "--method", "gradcam")


def copy_run(run, workspace):
    """A private copy of ``run`` in ``workspace`` (audits write into the run)."""
    target = runs.runs_dir(workspace) / run.id
    shutil.copytree(run.path, target)
    return runs.read_run(target)


def saved_audit(run) -> tuple[dict, dict]:
    with np.load(run.file("audit_maps.npz")) as maps:
        return json.loads(run.file("audit.json").read_text()), {name: maps[name] for name in maps.files}


def assert_same_audit(got, expected) -> None:
    """Per-class shares, accuracies, probabilities and mean maps equal (atol 1e-5); flags identical."""
    (report, maps), (want, want_maps) = got, expected
    assert report["images"] == want["images"] and report["flagged"] == want["flagged"]
    assert list(report["classes"]) == list(want["classes"])
    for name, entry in want["classes"].items():
        mine = report["classes"][name]
        assert mine["images"] == entry["images"] and mine["candidate_region"] == entry["candidate_region"]
        np.testing.assert_allclose(list(mine["shares"].values()), list(entry["shares"].values()), atol=1e-5)
        for key in ("accuracy_before", "accuracy_after", "probability_before", "probability_after", "share"):
            assert mine[key] == pytest.approx(entry[key], abs=1e-5), (name, key)
    assert set(maps) == set(want_maps)
    for name, mean_map in want_maps.items():
        np.testing.assert_allclose(maps[name], mean_map, atol=1e-5)


@pytest.fixture(scope="module")
def one_device_audit(tiny_trained_run, tmp_path_factory):
    """The audit as ever: this process, default strategy (the reference for every sharded audit)."""
    run = copy_run(tiny_trained_run, tmp_path_factory.mktemp("one_device"))
    from core.__main__ import main

    assert main(["audit", run.id, *AUDIT_ARGS, "--json", "--workspace", str(run.path.parent.parent)]) == 0
    return saved_audit(run)


# ---------------------------------------------------------------------------------------------------
# Gathering, without TensorFlow


def test_merge_puts_rows_back_in_order_and_sums_totals():
    parts = [
        (np.array([4, 0]), {"x": np.array([40, 0])}, {"sum": np.array([1.0, 2.0])}),
        (np.array([1, 3, 2]), {"x": np.array([10, 30, 20])}, {"sum": np.array([0.5, 0.5])}),
    ]
    gathered = sharding.merge(parts, 5, {"sum": np.zeros(2)})
    assert gathered.rows["x"].tolist() == [0, 10, 20, 30, 40]
    assert gathered.totals["sum"].tolist() == [1.5, 2.5]
    with pytest.raises(sharding.ShardingError, match=r"missing \[2\]"):
        sharding.merge([(np.array([0, 1, 3]), {}, {})], 4)
    with pytest.raises(sharding.ShardingError, match=r"more than once \[1\]"):
        sharding.merge([(np.array([0, 1]), {}, {}), (np.array([1, 2]), {}, {})], 3)


def test_without_a_placement_it_is_the_plain_loop():
    seen = []

    def work(indices, loaded, totals):
        seen.append(indices.tolist())
        totals["n"] += len(indices)
        return {"double": 2 * loaded}

    gathered = sharding.map_shards(None, 7, 3, work, load=lambda idx: np.asarray(idx) * 10, totals={"n": np.zeros(())})
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]  # consecutive batches, in order, in this thread
    assert gathered.rows["double"].tolist() == [0, 20, 40, 60, 80, 100, 120] and float(gathered.totals["n"]) == 7


# ---------------------------------------------------------------------------------------------------
# Who takes what: tf.distribute's input distribution, 1 to 3 replicas per worker x 1 to 3 workers

SLICES_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from core import sharding
placement = sharding.make_placement("mirrored", logical_cpus=3)  # before TensorFlow runs any op
import numpy as np, tensorflow as tf

cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
strategies = {1: tf.distribute.get_strategy(), 2: tf.distribute.MirroredStrategy(cpus[:2]), 3: placement.strategy}
cases = []
for replicas, strategy in strategies.items():
    for workers in (1, 2, 3):
        for count, batch in ((1, 2), (5, 2), (7, 3), (13, 4)):
            slices = []
            for worker in range(workers):  # worker w's pipeline as the strategy's InputContext gives it
                context = tf.distribute.InputContext(workers, worker, replicas * workers)
                local = sharding.local_batches(strategy, lambda _: sharding.index_dataset(count, batch, context))
                slices.append([[b.tolist() for b in batches] for batches in local])
            cases.append({"replicas": replicas, "workers": workers, "count": count, "batch": batch, "slices": slices})

def work(indices, loaded, totals):
    totals["sum"] += float(indices.sum())
    return {"square": indices ** 2, "device": np.array([tf.constant(0).device] * len(indices))}

gathered = sharding.map_shards(placement, 11, 2, work, totals={"sum": np.zeros(())})
devices = [s.device for s in sharding.plan(placement, 11, 2)]
out = {"cases": cases, "square": gathered.rows["square"].tolist(), "sum": float(gathered.totals["sum"]),
       "ran_on": gathered.rows["device"].tolist(), "devices": devices, "described": sharding.describe(placement)}
if len(sys.argv) > 2:  # python -m core explain --images ... --strategy mirrored, in this process (3 CPU devices)
    from core.__main__ import main
    out["explain"] = main(sys.argv[2:] + ["--strategy", "mirrored"])
print("\n" + json.dumps(out))
"""
EXPLAIN_ARGS = ("--methods", "gradcam", "--batch-size", "3")


@pytest.fixture(scope="module")
def slices(tiny_trained_run, tiny_shapes_dir, tmp_path_factory):
    """One process split into 3 CPU devices: the slices tf.distribute gives for 1-3 replicas x 1-3 workers,
    `map_shards` over the 3 devices, and ``explain --images`` of 8 images sharded over them."""
    folder = tmp_path_factory.mktemp("sharded_explain")
    run = copy_run(tiny_trained_run, folder / "ws")
    explain = ["explain", run.id, "--images", str(tiny_shapes_dir / "train" / "square"), *EXPLAIN_ARGS]
    explain += ["--out", str(folder / "out"), "--workspace", str(folder / "ws")]
    done = subprocess.run(
        [sys.executable, "-c", SLICES_SCRIPT, str(PROJECT_ROOT), *explain],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "folder": folder, "run": run}


def test_every_index_is_taken_exactly_once(slices):
    assert len(slices["cases"]) == 3 * 3 * 4
    for case in slices["cases"]:
        assert len(case["slices"]) == case["workers"]
        taken = []
        for worker, local in enumerate(case["slices"]):
            assert len(local) == case["replicas"], case  # one list per local replica, empty when N is small
            for batches in local:
                assert all(1 <= len(b) <= case["batch"] for b in batches), case
                assert all(i % case["workers"] == worker for b in batches for i in b), case  # the worker's shard
                taken += [i for b in batches for i in b]
        assert sorted(taken) == list(range(case["count"])), case


def test_the_layout_is_the_strategys(slices):
    cases = {(c["replicas"], c["workers"], c["count"], c["batch"]): c["slices"] for c in slices["cases"]}
    assert cases[(1, 1, 7, 3)] == [[[[0, 1, 2], [3, 4, 5], [6]]]]  # one replica: the plain loop
    assert cases[(2, 1, 5, 2)] == [[[[0, 1], [4]], [[2, 3]]]]  # batches in turn to the replicas
    assert cases[(3, 1, 1, 2)] == [[[[0]], [], []]]  # N < replicas: the others get nothing
    assert cases[(2, 3, 1, 2)] == [[[[0]], []], [[], []], [[], []]]
    assert cases[(2, 2, 5, 2)] == [[[[0, 2]], [[4]]], [[[1, 3]], []]]  # worker w: indices w, w + 2, ...


def test_each_replica_works_on_its_own_device_and_results_come_back_in_order(slices):
    assert slices["square"] == [i * i for i in range(11)] and slices["sum"] == 55.0
    devices = slices["devices"]
    assert [d.rsplit("device:", 1)[-1] for d in devices] == ["CPU:0", "CPU:1", "CPU:2"]
    # batches of 2 in turn: items 0-1 on replica 0, 2-3 on replica 1, 4-5 on replica 2, 6-7 on replica 0 ...
    assert slices["ran_on"] == [devices[(i // 2) % 3] for i in range(11)]
    assert slices["described"] == {
        "strategy": "MirroredStrategy",
        "requested": "mirrored",
        "replicas": 3,
        "workers": 1,
        "devices": ["/device:CPU:0", "/device:CPU:1", "/device:CPU:2"],
    }


# ---------------------------------------------------------------------------------------------------
# The audit on two logical CPU devices, and on two worker processes


def test_mirrored_audit_on_two_logical_cpus_equals_one_device(tiny_trained_run, one_device_audit, tmp_path):
    run = copy_run(tiny_trained_run, tmp_path / "ws")
    result = cli(
        "audit", run.id, *AUDIT_ARGS, "--logical-cpus", "2", "--strategy", "mirrored", "--workspace", tmp_path / "ws"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "computed by MirroredStrategy: 2 replica(s) on 1 worker(s)" in result.stdout
    report, maps = saved_audit(run)
    assert report["distribution"]["strategy"] == "MirroredStrategy"
    assert report["distribution"]["replicas"] == 2 and report["distribution"]["workers"] == 1
    assert one_device_audit[0]["distribution"]["replicas"] == 1
    assert_same_audit((report, maps), one_device_audit)


def test_two_workers_audit_together_and_the_chief_writes_one_audit(tiny_trained_run, one_device_audit, tmp_path):
    run = copy_run(tiny_trained_run, tmp_path / "ws")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = [sys.executable, "-m", "core", "audit", run.id, *AUDIT_ARGS, "--strategy", "multiworker"]
    processes = []
    try:
        for index in range(2):
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, index=index), "TF_CPP_MIN_LOG_LEVEL": "3"}
            env["XAI_WORKSPACE"] = str(tmp_path / "ws")
            log = open(tmp_path / f"worker{index}.log", "w")
            processes.append(subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 240
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    logs = [(tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(2)]
    assert [p.returncode for p in processes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert f"Worker 1 finished; the chief wrote {run.path / 'audit.json'}." in logs[1]
    assert "computed by MultiWorkerMirroredStrategy: 2 replica(s) on 2 worker(s)" in logs[0]
    report, maps = saved_audit(run)
    assert report["distribution"] == {
        "strategy": "MultiWorkerMirroredStrategy",
        "requested": "multiworker",
        "replicas": 2,
        "workers": 2,
        "devices": ["/job:worker/task:0/device:CPU:0", "/job:worker/task:1/device:CPU:0"],
    }
    assert_same_audit((report, maps), one_device_audit)
    assert not (run.path / "audit.parts").exists()  # the parts are merged into audit.json, then removed


# ---------------------------------------------------------------------------------------------------
# Batch explanations on two logical CPU devices


def test_mirrored_batch_explanations_equal_one_device(slices, tiny_shapes_dir, capsys):
    folder, run = slices["folder"], slices["run"]
    assert slices["explain"] == 0
    images = tiny_shapes_dir / "train" / "square"
    args = ["explain", run.id, "--images", images, *EXPLAIN_ARGS, "--out", folder / "one", "--workspace", folder / "ws"]
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    one, three = (json.loads((folder / name / "summary.json").read_text()) for name in ("one", "out"))
    assert three["distribution"]["replicas"] == 3 and one["distribution"]["replicas"] == 1
    order = [entry["image"] for entry in one["images"]]
    assert len(order) == 8 and order == sorted(order)
    assert [entry["image"] for entry in three["images"]] == order  # gathered back in the order given
    assert [e["predicted_class"] for e in three["images"]] == [e["predicted_class"] for e in one["images"]]
    for entry in one["images"]:
        name = entry["folder"].rsplit("/", 1)[-1]
        np.testing.assert_allclose(
            np.load(folder / "out" / name / "gradcam_raw.npy"),
            np.load(folder / "one" / name / "gradcam_raw.npy"),
            atol=1e-5,
        )
    assert not (folder / "out" / "summary.parts").exists()


# ---------------------------------------------------------------------------------------------------
# Bad options: one line, a non-zero exit code, nothing written


@pytest.mark.parametrize(
    "extra, env, message",
    [
        (["--strategy", "everywhere"], {}, "argument --strategy: invalid choice: 'everywhere'"),
        (["--logical-cpus", "0"], {}, "argument --logical-cpus: must be between 1 and 64. Received: 0"),
        (["--strategy", "multiworker"], {"TF_CONFIG": ""}, "error: --strategy multiworker needs the cluster in the"),
    ],
)
@pytest.mark.parametrize("command", ["audit", "explain"])
def test_bad_distribution_options_end_in_one_line(
    command, extra, env, message, tiny_trained_run, tiny_shapes_dir, tmp_path
):
    if command == "audit":
        args = ["audit", tiny_trained_run.id]
    else:
        args = [
            "explain",
            tiny_trained_run.id,
            "--images",
            tiny_shapes_dir / "test" / "square",
            "--out",
            tmp_path / "out",
        ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            *map(str, args),
            *extra,
            "--workspace",
            str(tiny_trained_run.path.parent.parent),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    assert not tiny_trained_run.file("audit.json").exists()
