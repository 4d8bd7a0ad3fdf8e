"""Shared fixtures. Test tiers: core units (seconds), the explanation contract, AppTest per page, one browser test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


# ---- app fixtures: a small prepared run that the page tests (AppTest and browser) share -----------


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory) -> Path:
    """A workspace holding one complete run of the compact CNN on a small shapes dataset (48 px).

    Trained for real (a few seconds), so every page has history, predictions and metrics to show.
    """
    from core.shapes import generate_shapes_dataset
    from core.training import TrainingConfig, train

    workspace = tmp_path_factory.mktemp("app_workspace")
    dataset = generate_shapes_dataset(workspace / "datasets" / "shapes", per_class=24, image_size=48, seed=1)
    config = TrainingConfig(arch="compact_cnn", image_size=48, epochs=3, batch_size=8, learning_rate=2e-3, seed=1)
    run = train(workspace, dataset, config, name="app-test")
    assert run.is_complete
    return workspace


# ===================================================================================================
# ---- core unit-test fixtures: tests/test_{data,runs,evaluation,visualize,models,training,cli}.py ----
# A tiny shapes dataset and a tiny trained run, each made once per session. TensorFlow is imported
# only by `tiny_trained_run`. Both are shared and read-only: copy before modifying (`copied_run`).
# ===================================================================================================

TINY_PER_CLASS = 12
TINY_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def tiny_shapes_dir(tmp_path_factory) -> Path:
    """The synthetic shapes dataset, 12 images per class at 32x32 (8 train / 2 val / 2 test per class)."""
    from core.shapes import generate_shapes_dataset

    return generate_shapes_dataset(
        tmp_path_factory.mktemp("tiny_shapes"), per_class=TINY_PER_CLASS, image_size=TINY_IMAGE_SIZE, seed=0
    )


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """The workspace holding `tiny_trained_run` (tests add no runs to it)."""
    return tmp_path_factory.mktemp("tiny_workspace")


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_shapes_dir, tiny_workspace):
    """A compact_cnn trained 2 epochs on `tiny_shapes_dir` (trained once per session; read-only)."""
    from core.training import TrainingConfig, train

    config = TrainingConfig(arch="compact_cnn", epochs=2, image_size=TINY_IMAGE_SIZE, batch_size=8, seed=0)
    return train(tiny_workspace, tiny_shapes_dir, config, name="tiny")


@pytest.fixture
def copied_run(tiny_trained_run, tmp_path):
    """A private copy of `tiny_trained_run` in its own workspace (``tmp_path / "ws"``), safe to modify."""
    import shutil

    from core import runs

    target = runs.runs_dir(tmp_path / "ws") / tiny_trained_run.id
    shutil.copytree(tiny_trained_run.path, target)
    return runs.read_run(target)


# ---- end of core unit-test fixtures ----------------------------------------------------------------
