"""The hyper-parameters of a training run (`TrainingConfig`), checked up front. No TensorFlow import: the
Training page and the job runner validate a configuration before any process starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.distribute import LR_RULES, STRATEGIES

IMBALANCE_THRESHOLD = 1.5  # largest/smallest class above this: class weights are used automatically
CLASS_WEIGHT_MODES = ("always", "none")  # and None: only when imbalanced; "auto" is an old name of "always"


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run (recorded in run.json).

    ``batch_size`` is per replica: the global batch is ``batch_size`` x replicas (x workers), recorded in
    run.json under ``distribution`` with the devices, the precision and the learning rate used.
    """

    arch: str = "compact_cnn"
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    weights: str | None = None
    augment: bool = False
    early_stopping_patience: int = 4
    class_weights: str | None = None  # "always"; "none": never; None: only above IMBALANCE_THRESHOLD
    fine_tune_epochs: int = 0
    fine_tune_fraction: float = 0.2  # share of the backbone's top layers unfrozen for fine-tuning
    fine_tune_lr_factor: float = 0.1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_split: bool = False
    strategy: str = "auto"  # see core.distribute: auto, one, mirrored, multiworker
    mixed_precision: bool = False  # float16 on a GPU, bfloat16 on a CPU that has it; the output layer in float32
    lr_rule: str = "none"  # none: learning_rate as given, for the global batch; linear: times the replicas
    cache: bool = False  # keep decoded, resized images on disk (<workspace>/cache/pipeline): later epochs skip decoding

    def __post_init__(self) -> None:
        if self.class_weights == "auto":  # the old name of "always"
            self.class_weights = "always"

    def validate(self) -> None:
        """Raises ValueError naming the first bad field and the value received."""
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1. Received: epochs={self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1. Received: batch_size={self.batch_size}"),
            (
                0 < self.learning_rate < 1,
                f"learning_rate must be between 0 and 1. Received: learning_rate={self.learning_rate}",
            ),
            (
                self.fine_tune_epochs >= 0,
                f"fine_tune_epochs must be 0 or more. Received: fine_tune_epochs={self.fine_tune_epochs}",
            ),
            (
                self.class_weights in (None, *CLASS_WEIGHT_MODES),
                f"class_weights must be 'always', 'none' or None (only when imbalanced). "
                f"Received: class_weights={self.class_weights!r}",
            ),
            (self.seed >= 0, f"seed must be 0 or more. Received: seed={self.seed}"),
            (
                self.early_stopping_patience >= 1,
                f"early_stopping_patience must be at least 1. Received: {self.early_stopping_patience}",
            ),
            (
                0 < self.fine_tune_fraction <= 1,
                f"fine_tune_fraction must be in (0, 1]. Received: fine_tune_fraction={self.fine_tune_fraction}",
            ),
            (
                0 < self.fine_tune_lr_factor <= 1,
                f"fine_tune_lr_factor must be in (0, 1]. Received: fine_tune_lr_factor={self.fine_tune_lr_factor}",
            ),
            (
                0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1,
                f"val_fraction and test_fraction must be in [0, 1). "
                f"Received: val_fraction={self.val_fraction}, test_fraction={self.test_fraction}",
            ),
            (
                self.val_fraction + self.test_fraction < 1,
                f"val_fraction + test_fraction must be below 1. Received: {self.val_fraction + self.test_fraction}",
            ),
            (
                16 <= self.image_size <= 1024,
                f"image_size must be between 16 and 1024 pixels. Received: image_size={self.image_size}",
            ),
        ]
        from core.catalog import ARCHITECTURE_SPECS

        checks += [
            (
                self.strategy in STRATEGIES,
                f"strategy must be one of {list(STRATEGIES)}. Received: strategy={self.strategy!r}",
            ),
            (self.lr_rule in LR_RULES, f"lr_rule must be one of {list(LR_RULES)}. Received: lr_rule={self.lr_rule!r}"),
            (
                self.arch in ARCHITECTURE_SPECS,
                f"Unknown architecture. Expected one of {list(ARCHITECTURE_SPECS)}. Received: arch={self.arch!r}",
            ),
            (
                self.weights is None or ARCHITECTURE_SPECS.get(self.arch, ("x",))[0] is not None,
                f"{self.arch} has no pre-trained weights: train it from scratch (weights none). "
                f"Received: weights={self.weights!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def class_weights_for(
    labels: Sequence[int] | np.ndarray, num_classes: int, mode: str | None
) -> dict[int, float] | None:
    """Balanced class weights (n / (k * n_c)) when asked (``"always"``, old name ``"auto"``) or, with
    ``mode=None``, when the largest class has more than IMBALANCE_THRESHOLD times the images of the
    smallest; otherwise (``"none"``, balanced classes, a class without images) None."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    if mode == "none" or counts.min() == 0:
        return None
    if mode not in ("always", "auto") and counts.max() / counts.min() <= IMBALANCE_THRESHOLD:
        return None
    return {i: float(counts.sum() / (num_classes * c)) for i, c in enumerate(counts)}
