"""Training across machines: `MultiWorkerMirroredStrategy` configured from ``TF_CONFIG``, checkpoints that
survive a restart, and a run written by the chief only.

Every worker runs the same command with its own ``task.index``:

    TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        python -m core train --strategy multiworker --data DIR --backup-dir /shared/xai-backup ...

Worker 0 (or the ``chief`` task, when the cluster names one) is the chief: it creates the run, writes its
history, progress, drift maps and best weights, evaluates and saves the model. The other workers train
and write nothing but their own scratch checkpoints. Keras ``fit`` fails under this strategy with Keras 3
(keras-team/keras#20585), so training runs a custom step (`core.multiworker_loop`) that still drives the
usual Keras callbacks (early stopping, learning rate on plateau, the run's recorder).

After every epoch all workers save a `tf.train.CheckpointManager` checkpoint (the chief's in
``<backup dir>/checkpoints``, the others' in scratch folders, as TensorFlow requires) and the chief writes
``state.json`` (epoch, history, callback states). A lost worker stops the whole cluster: TensorFlow's
collectives cannot go on without it, so the others end with an error within the heartbeat timeout. Start
every worker again with the same command (what a Kubernetes Job with ``restartPolicy: OnFailure`` does):
each restores the last checkpoint, the chief reopens the same run, and training continues from the next
epoch. The backup folder must be one that every worker reads (a shared volume); it is removed once the
run is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core import locks, runs
from core.distribute import DistributeError, Placement

TF_CONFIG_ENV = "TF_CONFIG"
HEARTBEAT_ENV = "XAI_HEARTBEAT_SECONDS"  # how soon a lost worker is noticed (TensorFlow's default: 10 s)
CONNECT_ENV = "XAI_CLUSTER_CONNECT_SECONDS"  # how long a worker waits for the others to join
CONNECT_SECONDS = 600.0
STATE_FILE = "state.json"
RUN_POINTER = "run.txt"
CHECKPOINTS = "checkpoints"
JOBS = ("chief", "worker")
EXAMPLE = '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'


@dataclass(frozen=True)
class Cluster:
    """The cluster ``TF_CONFIG`` describes: every task's address in rank order (the chief first) and ours."""

    addresses: list[str]
    tasks: list[tuple[str, int]]  # (job, index) per rank
    rank: int

    @property
    def size(self) -> int:
        return len(self.addresses)


def _is_address(address) -> bool:
    if not isinstance(address, str) or ":" not in address:
        return False
    host, port = address.rsplit(":", 1)
    return bool(host) and port.isascii() and port.isdecimal() and 1 <= int(port) <= 65535


def read_cluster(raw: str | None = None) -> Cluster:
    """Parses and checks ``TF_CONFIG`` (or ``raw``).

    Raises:
        DistributeError: missing, not JSON, or not a cluster of chief/worker tasks with this task in it.
    """
    raw = os.environ.get(TF_CONFIG_ENV) if raw is None else raw
    if not raw:
        raise DistributeError(
            f"--strategy multiworker needs the cluster in the {TF_CONFIG_ENV} environment variable, the same on "
            f"every worker but for task.index. Example: {TF_CONFIG_ENV}='{EXAMPLE}'"
        )
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise DistributeError(f"{TF_CONFIG_ENV} is not valid JSON ({exc}). Received: {raw[:80]!r}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise DistributeError(f"{TF_CONFIG_ENV} needs a 'cluster' and a 'task' object. Example: {EXAMPLE}")
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise DistributeError(
            f"{TF_CONFIG_ENV}: MultiWorkerMirroredStrategy uses only 'chief' and 'worker' tasks. Received: {unknown}"
        )
    addresses, tasks = [], []
    for job in JOBS:
        members = cluster.get(job, [])
        if not isinstance(members, list) or not all(_is_address(a) for a in members):
            raise DistributeError(
                f"{TF_CONFIG_ENV}: cluster.{job} must be a list of 'host:port' with a port from 1 to 65535. "
                f"Received: {members!r}"
            )
        if job == "chief" and len(members) > 1:
            raise DistributeError(f"{TF_CONFIG_ENV}: at most one chief. Received: {members}")
        addresses += members
        tasks += [(job, i) for i in range(len(members))]
    if not addresses:
        raise DistributeError(f"{TF_CONFIG_ENV}: the cluster lists no worker. Example: {EXAMPLE}")
    kind, index = task.get("type"), task.get("index")
    if (kind, index) not in tasks:
        raise DistributeError(
            f"{TF_CONFIG_ENV}: task {kind!r} {index!r} is not in the cluster ({len(addresses)} tasks: {tasks})."
        )
    return Cluster(addresses, tasks, tasks.index((kind, index)))


def make_strategy() -> Placement:
    """`MultiWorkerMirroredStrategy` from ``TF_CONFIG``; blocks until every worker has joined. Call it at
    the start of a process, before TensorFlow runs any op.

    Raises:
        DistributeError: a bad ``TF_CONFIG``, or TensorFlow already ran ops in this process.
    """
    cluster = read_cluster()
    import tensorflow as tf

    _configure_heartbeat(cluster)
    with _bounded_wait(cluster):  # the constructor blocks until every worker has joined
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise DistributeError(
                f"MultiWorkerMirroredStrategy could not start ({exc}); it must be created in a fresh process "
                "before TensorFlow runs any op."
            ) from exc
    local = [d.split("/device:")[-1] for d in strategy.extended.worker_devices]
    devices = [f"/job:{job}/task:{index}/device:{d}" for job, index in cluster.tasks for d in local]
    return Placement(
        strategy,
        "multiworker",
        devices,
        workers=cluster.size,
        worker_index=cluster.rank,
        cluster=list(cluster.addresses),
    )


WATCHDOG = """
import os, signal, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def stop(signum, frame):
    print(f"error: stopped by signal {signum} while waiting for the cluster.", file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
time.sleep(seconds)
print(message, file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def _bounded_wait(cluster: Cluster):
    """While the cluster assembles, TensorFlow waits in C++ for the missing workers with no deadline, holding
    Python's interpreter lock and swallowing SIGTERM, so nothing in this process can end the wait. A small
    watchdog process does: when the others have not joined within ``XAI_CLUSTER_CONNECT_SECONDS`` (default
    600), or on Ctrl-C, it prints the reason in one line and kills this process (exit status 137)."""
    import subprocess
    import sys

    raw = os.environ.get(CONNECT_ENV) or str(CONNECT_SECONDS)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 1e7:
        raise DistributeError(f"{CONNECT_ENV} must be a number of seconds above 0. Received: {raw!r}")
    others = [a for i, a in enumerate(cluster.addresses) if i != cluster.rank]
    message = (
        f"error: the cluster did not assemble within {seconds:g} s: worker {cluster.rank} "
        f"({cluster.addresses[cluster.rank]}) is waiting for {others}. Start every worker with the same "
        f"TF_CONFIG (its own task.index) and check that they reach each other; {CONNECT_ENV} sets the wait."
    )
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds), message])
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait(timeout=10)


def _configure_heartbeat(cluster: Cluster) -> None:
    """A shorter heartbeat timeout than TensorFlow's 10 s when ``XAI_HEARTBEAT_SECONDS`` asks for one (the
    tests do: a lost worker is then noticed sooner). The rest is what the strategy would configure."""
    seconds = os.environ.get(HEARTBEAT_ENV)
    if not seconds:
        return
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    job, index = cluster.tasks[0]
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=j, num_tasks=sum(t[0] == j for t in cluster.tasks)) for j in JOBS
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{job}/replica:0/task:{index}",
        heartbeat_timeout_in_ms=int(float(seconds) * 1000),
        coordinated_jobs=[j for j in jobs if j.num_tasks],
    )


# ---------------------------------------------------------------------------------------------------
# The backup folder: checkpoints, state, the run to resume


class Backup:
    """What lets a restarted cluster resume: ``checkpoints/`` (the chief's), ``worker-<rank>/`` (scratch
    checkpoints of the others), ``state.json`` (epoch, history rows, callback states; the chief writes it
    after each checkpoint) and ``run.txt`` (the run folder the chief is training)."""

    def __init__(self, path: str | os.PathLike, rank: int):
        self.path = Path(path)
        self.rank = rank
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def own_checkpoints(self) -> Path:
        return self.checkpoints if self.rank == 0 else self.path / f"worker-{self.rank}"

    @property
    def best_weights(self) -> Path:
        return self.path / "best.weights.h5"

    def read_state(self) -> dict | None:
        try:
            return json.loads((self.path / STATE_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def write_state(self, state: dict) -> None:
        runs.atomic_write_json(self.path / STATE_FILE, state)

    def run_to_resume(self) -> runs.Run | None:
        """The run a previous chief left running or failed (not complete, not cancelled), reopened for this
        process: status running again, its error cleared. None when there is none.

        Raises:
            DistributeError: that run is still held by a live process.
        """
        try:
            folder = Path((self.path / RUN_POINTER).read_text("utf-8").strip())
            run = runs.read_run(folder)
        except (OSError, runs.RunError):
            return None
        if run.status not in (runs.RUNNING, runs.FAILED):
            return None
        if not locks.acquire(run.path / runs.LOCK_FILE):
            raise DistributeError(f"Run {run.id} is still being trained by another live process; stop it first.")
        meta = {k: v for k, v in runs.read_run(run.path).meta.items() if k not in ("error", "traceback", "finished_at")}
        meta.update(status=runs.RUNNING, pid=os.getpid())
        runs.atomic_write_json(run.file(runs.RUN_FILE), meta)
        return runs.Run(run.path, meta)

    def remember(self, run: runs.Run) -> None:
        runs.atomic_write_text(self.path / RUN_POINTER, str(run.path) + "\n")

    def remove_scratch(self) -> None:
        if self.rank != 0:
            shutil.rmtree(self.own_checkpoints, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def default_backup_dir(workspace: Path, data_dir, config, name: str | None, cluster: list[str]) -> Path:
    """``<workspace>/backups/multiworker-<hash of the cluster, dataset, configuration and name>``: the same
    for every worker started with the same command on a shared workspace, and on a restart."""
    key = json.dumps([cluster, str(Path(data_dir).resolve()), asdict(config), name], sort_keys=True, default=str)
    return Path(workspace) / "backups" / f"multiworker-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------------
# train


def train(
    workspace,
    data_dir,
    config,
    placement: Placement,
    name=None,
    progress=None,
    extra_meta=None,
    on_run_created=None,
    extra_callbacks=None,
    backup_dir=None,
) -> runs.Run | None:
    """`core.training.train` for ``strategy="multiworker"``: the run (chief) or None (other workers)."""
    import keras

    from core import training
    from core.multiworker_loop import Loop, explain_failure

    index, warnings, weights, meta, policy = training.prepare(data_dir, config, placement, name, extra_meta)
    folder = backup_dir or default_backup_dir(Path(workspace), data_dir, config, name, placement.cluster)
    backup = Backup(folder, placement.worker_index)
    meta["distribution"].update(cluster=placement.cluster, backup_dir=str(backup.path))
    if warnings and progress and placement.is_chief:
        progress({"stage": "warnings", "warnings": warnings, "message": " ".join(warnings)})
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    model = training.build_for(config, len(index.class_names), meta["input_size"], placement.strategy, policy)
    run, trained = None, False
    if placement.is_chief:
        run = backup.run_to_resume() or runs.create_run(workspace, meta["name"], meta)
        backup.remember(run)
        if on_run_created:
            on_run_created(run)
    try:
        if run is not None:
            training.save_splits(run, index)
        more = list(extra_callbacks(run)) if extra_callbacks and run is not None else []
        loop = Loop(placement, model, index, config, weights, policy, backup, run, progress, more)
        recorder = loop.fit()
        backup.remove_scratch()
        if run is None:
            loop.barrier()  # leave only once the chief has evaluated and saved: it never races a departing peer
            return None
        if recorder.cancelled:
            loop.barrier()
            backup.remove()
            return training.stop_run(run, reason="Cancelled by the user.")
        trained = True
        done = training._finish(
            run,
            model,
            index,
            recorder,
            started,
            progress,
            config=config,
            policy=policy,
            best_path=backup.best_weights,
            input_pipeline=loop.pipeline_summary(),
            resumed_from_epoch=loop.resumed_from,
        )
        loop.barrier()
        backup.remove()
        return done
    except BaseException as exc:
        if trained:  # the others wait for the chief: release them, then report the chief's own error
            with contextlib.suppress(Exception):
                loop.barrier()
        failure = explain_failure(exc, backup)
        if run is not None:
            training.stop_run(run, failure)
        if failure is exc:
            raise
        raise failure from exc
    finally:
        if run is not None:
            runs.clean_leftovers(run.path)
