"""Real data end to end: Fashion-MNIST (Debian's package) -> image folder -> short training -> every page."""

from __future__ import annotations

import json

import pytest
from conftest import PROJECT_ROOT
from streamlit.testing.v1 import AppTest

from core import runs
from core.data import scan_dataset
from core.idx import FASHION_MNIST_CLASSES, export_fashion_mnist
from core.training import TrainingConfig, train

PAGES = [
    "pages/1_Dataset.py",
    "pages/2_Training.py",
    "pages/3_Evaluation.py",
    "pages/4_Explainer.py",
    "pages/5_Import_model.py",
]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("fashion")
    data = export_fashion_mnist(workspace / "datasets" / "fashion_mnist", per_class_train=40, per_class_test=10)
    config = TrainingConfig(arch="compact_cnn", image_size=32, epochs=4, batch_size=16, learning_rate=2e-3, seed=0)
    run = train(workspace, data, config, name="fashion")
    return workspace, run


def test_fashion_mnist_folder_scan(fashion_run):
    workspace, run = fashion_run
    index = scan_dataset(run.meta["dataset"])
    summary = index.summary()
    assert index.class_names == sorted(FASHION_MNIST_CLASSES)
    assert summary["image_sizes"] == {"28x28": 500} and summary["colour_modes"] == {"L": 500}
    assert all(n == 10 for n in summary["counts"]["test"].values())
    assert all(n == 34 for n in summary["counts"]["train"].values())  # 6 of 40 carved out for validation


def test_short_training_learns_something(fashion_run):
    _, run = fashion_run
    assert run.is_complete
    metrics = runs.load_metrics(run)
    assert metrics["n_samples"] == 100
    assert metrics["accuracy"] > 0.3  # chance is 0.1: 4 epochs on 340 images already learn
    assert metrics["roc_auc_macro"] > 0.75


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_the_fashion_run(fashion_run, monkeypatch, page):
    workspace, run = fashion_run
    monkeypatch.setenv("XAI_WORKSPACE", str(workspace))
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=240).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Classes"] == "10"
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page.endswith("Dataset.py"):
        assert len(list(at.get("image"))) == 10 * 6
        assert at.dataframe[0].value["total"].tolist() == [50] * 10
    if page.endswith("Evaluation.py"):
        report = at.table[0].value
        assert len(report) == 10 + 3  # ten classes, accuracy, macro and weighted averages
        roc = json.loads(at.get("plotly_chart")[2].proto.spec)
        assert len([t for t in roc["data"] if t["name"] != "chance"]) == 10
    if page.endswith("Explainer.py"):
        assert len([c for c in at.caption if " ms · " in c.value]) == 3  # one timing per default method
