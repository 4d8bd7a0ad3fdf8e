"""Devices and `tf.distribute` strategies for training: which strategy, over which devices, in which
precision, with which batch size and learning rate.

    split_cpu(2)                                   # testing without GPUs: before TensorFlow runs any op
    placement = make_strategy("mirrored")          # Placement(strategy, devices, replicas, ...)
    with placement.strategy.scope():
        model = build_model(...)

Strategies (``--strategy``):
    auto         `MirroredStrategy` over every visible GPU when there are several, the default strategy otherwise
    one          `OneDeviceStrategy` on the first GPU, or the CPU
    mirrored     `MirroredStrategy` over every GPU (or every logical CPU device when there is no GPU)
    multiworker  `MultiWorkerMirroredStrategy` configured from ``TF_CONFIG`` (see `core.multiworker`)

Batch size: ``--batch-size`` is per replica; the global batch is batch size x replicas (x workers). The
learning rate rule is ``none`` (the learning rate is used as given, for the global batch) or ``linear``
(multiplied by the number of replicas, Goyal et al. 2017). Both are recorded in run.json.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
LR_RULES = ("none", "linear")
STRATEGY_NAMES = {"multiworker": "MultiWorkerMirroredStrategy"}  # its class is CollectiveAllReduceStrategy


_MIRRORED: dict[tuple[str, ...], object] = {}


class DistributeError(ValueError):
    """A strategy, device setting or cluster description cannot be used; the message says why."""


# ---------------------------------------------------------------------------------------------------
# Devices


def split_cpu(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (to run `MirroredStrategy` without GPUs). Must run
    before TensorFlow runs its first op, at the start of a process.

    Raises:
        DistributeError: a bad count, or TensorFlow already initialised its devices.
    """
    if not 1 <= int(count) <= 64:
        raise DistributeError(f"logical CPU devices must be between 1 and 64. Received: {count}")
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError as exc:
        raise DistributeError(
            f"The CPU can only be split into logical devices before TensorFlow runs its first op ({exc})."
        ) from exc


def visible_devices() -> dict[str, list[str]]:
    """Logical GPU and CPU device names TensorFlow sees (this initialises TensorFlow's devices)."""
    import tensorflow as tf

    return {kind: [d.name for d in tf.config.list_logical_devices(kind)] for kind in ("GPU", "CPU")}


def cpu_supports_bfloat16() -> bool:
    """True when the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


# ---------------------------------------------------------------------------------------------------
# Precision


def precision_policy(mixed: bool, on_gpu: bool) -> tuple[str, str | None]:
    """(Keras dtype policy, note) for ``--mixed-precision``: ``mixed_float16`` on a GPU,
    ``mixed_bfloat16`` on a CPU with bfloat16 instructions, else ``float32`` with a note saying why."""
    if not mixed:
        return "float32", None
    if on_gpu:
        return "mixed_float16", None
    if cpu_supports_bfloat16():
        return "mixed_bfloat16", None
    return "float32", (
        "Mixed precision was asked for, but this CPU has no bfloat16 instructions (AVX512-BF16 or AMX) and "
        "there is no GPU: the run trained in float32."
    )


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers built inside take the Keras dtype policy ``name``; the previous global policy comes back after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------------------------------------------
# Strategies


@dataclass
class Placement:
    """A strategy and what run.json records about it."""

    strategy: object  # tf.distribute.Strategy
    requested: str
    devices: list[str]
    workers: int = 1
    worker_index: int = 0
    notes: list[str] = field(default_factory=list)
    cluster: list[str] = field(default_factory=list)  # every worker's address (multiworker)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def on_gpu(self) -> bool:
        return any("GPU" in d.upper() for d in self.devices)

    def record(self, batch_size: int, learning_rate: float, lr_rule: str, precision: str) -> dict:
        """The ``distribution`` entry of run.json."""
        kind = type(self.strategy).__name__
        kind = "DefaultStrategy" if kind.startswith("_Default") else kind
        return {
            "strategy": STRATEGY_NAMES.get(self.requested) if self.requested == "multiworker" else kind,
            "requested": self.requested,
            "devices": list(self.devices),
            "replicas": self.replicas,
            "workers": self.workers,
            "batch_size_per_replica": int(batch_size),
            "global_batch_size": int(batch_size) * self.replicas,
            "learning_rate_rule": lr_rule,
            "learning_rate": learning_rate_for(learning_rate, self.replicas, lr_rule),
            "precision": precision,
        }


def learning_rate_for(learning_rate: float, replicas: int, rule: str) -> float:
    """The learning rate used: as given (``none``) or times the number of replicas (``linear``)."""
    if rule not in LR_RULES:
        raise DistributeError(f"Expected a learning rate rule in {list(LR_RULES)}. Received: {rule!r}")
    return float(learning_rate) * (replicas if rule == "linear" else 1)


def make_strategy(requested: str) -> Placement:
    """The strategy for ``--strategy`` (see the module docstring).

    Raises:
        DistributeError: an unknown name, or ``multiworker`` without a usable ``TF_CONFIG``.
    """
    if requested not in STRATEGIES:
        raise DistributeError(f"Expected a strategy in {list(STRATEGIES)}. Received: strategy={requested!r}")
    if requested == "multiworker":
        from core import multiworker

        return multiworker.make_strategy()
    import tensorflow as tf

    devices = visible_devices()
    gpus, cpus = devices["GPU"], devices["CPU"]
    if requested == "one":
        device = gpus[0] if gpus else cpus[0]
        return Placement(tf.distribute.OneDeviceStrategy(device), requested, [device])
    if requested == "mirrored" or (requested == "auto" and len(gpus) > 1):
        chosen = gpus or cpus
        notes = []
        if len(chosen) == 1:
            notes.append(f"mirrored: only one device ({chosen[0]}), so one replica.")
        if tuple(chosen) not in _MIRRORED:  # one per device set and process: two would mix their collectives
            _MIRRORED[tuple(chosen)] = tf.distribute.MirroredStrategy(chosen)
        return Placement(_MIRRORED[tuple(chosen)], requested, list(chosen), notes=notes)
    strategy = tf.distribute.get_strategy()  # the default strategy: TensorFlow places ops itself
    return Placement(strategy, requested, [gpus[0] if gpus else cpus[0]])


def describe(meta: dict) -> str | None:
    """One line about how a run was trained, from its run.json (None for runs that do not record it):
    ``MirroredStrategy, 2 replicas (CPU:0, CPU:1) · float32 · batch 8 per replica, 16 global``."""
    info = meta.get("distribution")
    if not isinstance(info, dict):
        return None
    devices = [str(d).split("device:")[-1] for d in info.get("devices") or []]
    shown = ", ".join(devices[:4]) + (f" and {len(devices) - 4} more" if len(devices) > 4 else "")
    workers = info.get("workers") or 1
    where = f"{info.get('replicas', '?')} replica(s)" + (f" on {workers} workers" if workers > 1 else "")
    return (
        f"{info.get('strategy', '?')}, {where} ({shown}) · {info.get('precision', 'float32')} · batch "
        f"{info.get('batch_size_per_replica', '?')} per replica, {info.get('global_batch_size', '?')} global"
    )
