"""Sharding a list of N items (test images) over the replicas and workers of a `tf.distribute` strategy, and
gathering the results back in the items' order: what batch explanations and the audit run on.

    placement = make_placement("mirrored", logical_cpus=2)     # at the start of the process
    gathered = map_shards(placement, len(paths), 32, work, load=load, totals={"sums": zeros})
    gathered.rows["shares"]                                   # (N, ...) in the order of paths
    gathered.totals["sums"]                                   # summed over every replica and worker

Who takes what is decided by tf.distribute's own input distribution. `distribute_datasets_from_function`
calls `index_dataset` once per worker with a `tf.distribute.InputContext`: the worker's input pipeline is
its shard of the indices 0..N-1 (``shard(num_input_pipelines, input_pipeline_id)``) cut into per-replica
batches, and the strategy hands those batches in turn to the worker's replicas (an empty batch to a
replica with none left). Iterating it once gives each local replica its index batches (`plan`): every
index lands exactly once across replicas and workers, uneven N and N < replicas included.

The work stays numpy-level (the explanation methods are not rewritten): each local replica runs in its
own thread under ``tf.device(<its device>)``, decoding its next batch while the current one is worked on.
``work(indices, loaded, totals)`` returns the batch's rows (arrays whose first axis follows ``indices``)
and may add into ``totals``, that replica's own copy of the zero arrays given.

Gathering: on one machine the replicas' rows are put back at their indices and their totals summed in
replica order. Across workers (``MultiWorkerMirroredStrategy``) every worker writes ``part-<rank>.npz``
into ``parts_dir`` (a folder every worker reads), waits at a barrier (a cross-worker all-reduce), and the
chief merges the parts into one result and removes them; the other workers get None.

With no placement, the default strategy or one device, this is exactly a plain loop over consecutive
batches in the calling thread: the same batches in the same order, the same sums.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cli_serve import integer
from core.distribute import STRATEGIES, DistributeError, Placement

PART_FILE = "part-{rank}.npz"
WorkFn = Callable[[np.ndarray, object, dict], dict]
LoadFn = Callable[[np.ndarray], object]
ProgressFn = Callable[[int, int], None]


class ShardingError(ValueError):
    """The gathered parts do not cover every item exactly once (a part is missing or stale)."""


@dataclass
class Shard:
    """One local replica's share: its device and its batches of item indices, in order."""

    replica: int  # global replica id: worker rank x replicas per worker + local id
    device: str | None  # None: no device scope (the default strategy places ops itself)
    batches: list[np.ndarray]

    @property
    def items(self) -> int:
        return int(sum(len(b) for b in self.batches))


@dataclass
class Gathered:
    """Every item's rows in the items' order, and the totals summed over every replica and worker."""

    rows: dict[str, np.ndarray]
    totals: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Command line: the same --strategy and CPU split as ``train``


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--strategy`` and ``--logical-cpus``."""
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help=f"where the {what} runs: auto: every GPU when there are several, else one device; one: one "
        "device; mirrored: every GPU (or logical CPU device), each replica takes its slice; multiworker: "
        "MultiWorkerMirroredStrategy from TF_CONFIG, every worker runs the same command and the chief writes "
        "the result (the run or output folder must be shared)",
    )
    parser.add_argument(
        "--logical-cpus",
        type=integer(1, 64),
        default=None,
        help="split the CPU into N logical devices first (to try --strategy mirrored without GPUs)",
    )


def check_options(strategy: str) -> None:
    """The checks `make_placement` makes that need no TensorFlow (a known strategy; for ``multiworker``, a
    usable ``TF_CONFIG``), for commands to fail fast before importing it.

    Raises:
        DistributeError: what is wrong, in one line.
    """
    if strategy not in STRATEGIES:
        raise DistributeError(f"Expected a strategy in {list(STRATEGIES)}. Received: strategy={strategy!r}")
    if strategy == "multiworker":
        from core.multiworker import read_cluster

        read_cluster()


def make_placement(strategy: str = "auto", logical_cpus: int | None = None) -> Placement:
    """The CPU split (when asked) and the strategy; call it first in the process, before TensorFlow runs
    any op.

    Raises:
        DistributeError: an unknown strategy, a bad device count, TensorFlow already initialised, or
            ``multiworker`` without a usable ``TF_CONFIG``.
    """
    check_options(strategy)  # a missing or bad TF_CONFIG is reported before TensorFlow is even imported
    if logical_cpus is not None:
        from core.distribute import split_cpu

        split_cpu(logical_cpus)
    from core.distribute import make_strategy

    return make_strategy(strategy)


def describe(placement: Placement | None) -> dict:
    """What result files record about who computed them: ``{"strategy", "requested", "replicas",
    "workers", "devices"}``."""
    if placement is None:
        return {"strategy": "DefaultStrategy", "requested": None, "replicas": 1, "workers": 1, "devices": []}
    kind = type(placement.strategy).__name__
    kind = "DefaultStrategy" if kind.startswith("_Default") else kind
    if placement.requested == "multiworker":
        kind = "MultiWorkerMirroredStrategy"
    return {
        "strategy": kind,
        "requested": placement.requested,
        "replicas": placement.replicas,
        "workers": placement.workers,
        "devices": list(placement.devices),
    }


# ---------------------------------------------------------------------------------------------------
# Who takes what


def index_dataset(count: int, batch_size: int, context):
    """One input pipeline's items: its shard of the indices ``0..count-1`` (int64), in per-replica batches
    of ``batch_size``. ``context`` is the `tf.distribute.InputContext` the strategy passes."""
    import tensorflow as tf

    per_replica = context.get_per_replica_batch_size(batch_size * context.num_replicas_in_sync)
    indices = tf.data.Dataset.range(int(count)).shard(context.num_input_pipelines, context.input_pipeline_id)
    return indices.batch(per_replica)


def local_batches(strategy, dataset_fn) -> list[list[np.ndarray]]:
    """Per local replica (in the strategy's order), the index batches that
    ``strategy.distribute_datasets_from_function(dataset_fn)`` hands it; empty batches left out."""
    local = 1 if _is_default(strategy) else len(strategy.extended.worker_devices)
    batches: list[list[np.ndarray]] = [[] for _ in range(local)]
    for step in strategy.distribute_datasets_from_function(dataset_fn):
        for replica, values in enumerate(strategy.experimental_local_results(step)):
            if int(values.shape[0]):
                batches[replica].append(values.numpy().astype(np.int64))
    return batches


def _is_default(strategy) -> bool:
    return type(strategy).__name__.startswith("_Default")


def plan(placement: Placement | None, count: int, batch_size: int) -> list[Shard]:
    """This worker's local replicas and their index batches (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"Expected a batch size of at least 1. Received: batch_size={batch_size}")
    if placement is None:
        return [Shard(0, None, [np.arange(s, min(s + batch_size, count)) for s in range(0, count, batch_size)])]
    strategy = placement.strategy
    per_replica = local_batches(strategy, lambda context: index_dataset(count, batch_size, context))
    devices = [None] if _is_default(strategy) else list(strategy.extended.worker_devices)
    first = placement.worker_index * len(per_replica)
    return [Shard(first + r, devices[r], batches) for r, batches in enumerate(per_replica)]


# ---------------------------------------------------------------------------------------------------
# Running the work


def _loaded_ahead(batches: list[np.ndarray], load: LoadFn | None):
    """Yields (indices, loaded) per batch, the next batch loaded in a thread while the caller works."""
    if load is None:
        yield from ((indices, indices) for indices in batches)
        return
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, batches[0])
        for number, indices in enumerate(batches):
            loaded = future.result()
            if number + 1 < len(batches):
                future = pool.submit(load, batches[number + 1])
            yield indices, loaded


def _run_shard(shard: Shard, work: WorkFn, load, totals: dict, report, stop: threading.Event):
    """(indices, rows per name, totals) of one replica; its rows concatenated over its batches."""
    own = {name: np.array(value, copy=True) for name, value in totals.items()}
    indices, rows = [], {}
    scope = contextlib.nullcontext()
    if shard.device:
        import tensorflow as tf

        scope = tf.device(shard.device)
    with scope:
        for batch, loaded in _loaded_ahead(shard.batches, load):
            if stop.is_set():
                break
            out = work(batch, loaded, own)
            for name, values in out.items():
                values = np.asarray(values)
                if len(values) != len(batch):
                    raise ValueError(f"work returned {len(values)} rows of {name!r} for a batch of {len(batch)}")
                rows.setdefault(name, []).append(values)
            indices.append(batch)
            report(len(batch))
    index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    return index, {name: np.concatenate(parts) for name, parts in rows.items()}, own


def run_local(shards: list[Shard], work: WorkFn, load=None, totals=None, progress=None):
    """Runs every local replica (one thread each; the calling thread when there is one) and returns their
    results in replica order: ``[(indices, rows, totals), ...]``."""
    totals = dict(totals or {})
    lock, done, total = threading.Lock(), [0], sum(s.items for s in shards)
    stop = threading.Event()

    def report(items: int) -> None:
        with lock:
            done[0] += items
            if progress:
                progress(done[0], total)

    if len(shards) == 1:
        return [_run_shard(shards[0], work, load, totals, report, stop)]
    with ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="replica") as pool:
        futures = [pool.submit(_run_shard, s, work, load, totals, report, stop) for s in shards]
        wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            stop.set()  # the other replicas stop after their current batch; the first error is raised
        return [future.result() for future in futures]


def merge(parts, count: int, totals: dict | None = None) -> Gathered:
    """``[(indices, rows, totals), ...]`` -> every item's rows in order 0..count-1 and the summed totals.

    Raises:
        ShardingError: an item is missing or computed more than once.
    """
    index = np.concatenate([np.asarray(p[0], np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    seen = np.bincount(index, minlength=count) if len(index) else np.zeros(count, np.int64)
    if len(seen) != count or (seen != 1).any():
        missing = np.flatnonzero(seen[:count] == 0)[:5].tolist()
        twice = np.flatnonzero(seen > 1)[:5].tolist()
        raise ShardingError(
            f"The gathered results do not cover items 0..{count - 1} once each: missing {missing}, computed "
            f"more than once {twice}, beyond the end {int(len(seen) > count)} (a worker's part is missing or stale)."
        )
    order = np.argsort(index, kind="stable")
    names = list(dict.fromkeys(name for p in parts for name in p[1]))
    rows = {name: np.concatenate([p[1][name] for p in parts if name in p[1]])[order] for name in names}
    summed = {}
    for name in totals or (parts[0][2] if parts else {}):
        summed[name] = np.array(parts[0][2][name] if parts else totals[name], copy=True)
        for p in parts[1:]:
            summed[name] += p[2][name]
    return Gathered(rows, summed)


# ---------------------------------------------------------------------------------------------------
# Across workers


def barrier(strategy) -> None:
    """Returns once every worker of ``strategy`` got here (an all-reduce of one number)."""
    import tensorflow as tf

    @tf.function
    def together():
        one = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce("SUM", one, axis=None)

    together()


def write_part(folder: Path, rank: int, local) -> Path:
    """This worker's local results as ``part-<rank>.npz`` (written atomically)."""
    index, rows, totals = local
    arrays = {"index": index, **{f"rows.{k}": v for k, v in rows.items()}}
    arrays.update({f"totals.{k}": v for k, v in totals.items()})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PART_FILE.format(rank=rank)
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)
    return path


def read_part(path: Path):
    """(indices, rows, totals) from a part file."""
    with np.load(path, allow_pickle=False) as saved:
        rows = {k[5:]: saved[k] for k in saved.files if k.startswith("rows.")}
        totals = {k[7:]: saved[k] for k in saved.files if k.startswith("totals.")}
        return saved["index"], rows, totals


def _local(results) -> tuple:
    """One worker's replicas' results as one (indices, rows, totals)."""
    index = np.concatenate([r[0] for r in results])
    names = list(dict.fromkeys(name for r in results for name in r[1]))
    rows = {name: np.concatenate([r[1][name] for r in results if name in r[1]]) for name in names}
    totals = {name: sum((r[2][name] for r in results[1:]), np.array(results[0][2][name])) for name in results[0][2]}
    return index, rows, totals


# ---------------------------------------------------------------------------------------------------
# All of it


def map_shards(
    placement: Placement | None,
    count: int,
    batch_size: int,
    work: WorkFn,
    load: LoadFn | None = None,
    totals: dict[str, np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    parts_dir: str | os.PathLike | None = None,
) -> Gathered | None:
    """Runs ``work`` over items ``0..count-1`` sharded over ``placement``'s replicas and workers, and gathers
    the results (see the module docstring).

    Args:
        placement: from `make_placement` (None: the calling thread, no device scope).
        count: the number of items N.
        batch_size: items per batch on each replica.
        work: ``work(indices, loaded, totals) -> {name: rows}``; rows' first axis follows ``indices``.
        load: ``load(indices) -> loaded`` (decoding, say), run one batch ahead in a thread; None: the indices.
        totals: zero arrays each replica adds into (its own copy); summed over replicas and workers.
        progress: ``progress(done, total)`` with this worker's item counts, after every batch.
        parts_dir: the folder every worker shares for ``part-<rank>.npz`` (needed with several workers).

    Returns:
        The gathered rows and totals; None on a worker that is not the chief.

    Raises:
        ShardingError: the parts do not cover every item once. Whatever ``work`` or ``load`` raise.
    """
    workers = placement.workers if placement is not None else 1
    folder = Path(parts_dir) if parts_dir is not None else None
    if workers > 1:
        if folder is None:
            raise ValueError("Several workers gather their results through files: expected parts_dir, a shared folder")
        if placement.is_chief:
            shutil.rmtree(folder, ignore_errors=True)  # stale parts of an interrupted run
        barrier(placement.strategy)  # no worker writes its part before the chief has cleared the folder
    shards = plan(placement, count, batch_size)
    results = run_local(shards, work, load, totals, progress)
    if workers == 1:
        return merge(results, count, totals)
    write_part(folder, placement.worker_index, _local(results))
    barrier(placement.strategy)  # every part is written
    if not placement.is_chief:
        return None
    parts = []
    for rank in range(workers):
        path = folder / PART_FILE.format(rank=rank)
        if not path.is_file():
            raise ShardingError(f"Worker {rank}'s results ({path}) are missing: is {folder} shared by every worker?")
        parts.append(read_part(path))
    gathered = merge(parts, count, totals)
    shutil.rmtree(folder, ignore_errors=True)
    return gathered
