"""The command line on bad numbers, damaged runs and data edge cases: one clear line, exit 2, no traceback."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from PIL import Image
from test_cli import run_main

from core import runs


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "x", "--seed", "-5"], "argument --seed: must be between 0 and 4294967295. Received: -5"),
        (["train", "--data", "x", "--epochs", "0"], "argument --epochs: must be between 1 and 10000. Received: 0"),
        (["train", "--data", "x", "--batch-size", "two"], "argument --batch-size: expected a whole number"),
        (["train", "--data", "x", "--lr", "0"], "argument --lr: must be in (0, 1). Received: 0"),
        (["train", "--data", "x", "--lr", "nan"], "argument --lr: must be in (0, 1). Received: nan"),
        (["train", "--data", "x", "--img-size", "8"], "argument --img-size: must be between 16 and 1024"),
        (["train", "--data", "x", "--val-fraction", "1.5"], "argument --val-fraction: must be in [0, 1)"),
        (["train", "--data", "x", "--fine-tune-epochs", "-1"], "argument --fine-tune-epochs: must be between 0"),
        (["dataset", "x", "--seed", "-5"], "argument --seed: must be between 0 and"),
        (["demo", "--epochs", "0"], "argument --epochs: must be between 1 and 500"),
    ],
)
def test_bad_numbers_are_refused_naming_the_option(capsys, args, message):
    code, out, err = run_main(capsys, *args)
    assert code == 2 and out == ""
    assert message in err
    assert "Traceback" not in err


def test_class_weights_always_and_its_old_name(capsys):
    from core.__main__ import build_parser

    for value, expected in (("always", "always"), ("auto", "always"), ("none", "none")):
        args = build_parser().parse_args(["train", "--data", "x", "--class-weights", value])
        from core.training import TrainingConfig

        assert TrainingConfig(class_weights=args.class_weights).class_weights == expected
    code, out, _ = run_main(capsys, "train", "--help")
    assert "always: weight classes by inverse frequency" in " ".join(out.split())


def _patients(root):
    """Class layout with sub-folders (one per patient): 4 patients per class, 3 images each."""
    for cls in ("a", "b"):
        for patient in range(4):
            folder = root / cls / f"p{patient}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (patient * 50, i * 60, 0)).save(folder / f"{i}.png")
    return root


def test_dataset_group_split_keeps_each_patient_in_one_split(capsys, tmp_path):
    root = _patients(tmp_path / "ds")
    code, out, err = run_main(capsys, "dataset", root, "--group-split", "--test-fraction", "0.25", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["images"] == 24
    from core.data import scan_dataset

    index = scan_dataset(root, 0.15, 0.25, seed=0, group_split=True)
    per_patient = index.records.assign(patient=index.records["path"].str.rsplit("/", n=1).str[0])
    assert per_patient["patient"].nunique() == 8
    assert (per_patient.groupby("patient")["split"].nunique() == 1).all()
    assert summary["counts"] == index.summary()["counts"]


def _with_single_image_class(root):
    for cls, n in (("a", 10), ("b", 10), ("lonely", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (i * 20, 0, 0) if cls == "a" else (0, i * 20, 0)).save(root / cls / f"{i}.png")
    return root


def test_dataset_warns_about_a_single_image_class(capsys, tmp_path):
    root = _with_single_image_class(tmp_path / "ds")
    code, out, err = run_main(capsys, "dataset", root)
    assert code == 0
    assert "warning: 1 class(es) have a single image (lonely)" in err


def test_train_warns_and_records_the_warning_in_the_run(capsys, tmp_path):
    root = _with_single_image_class(tmp_path / "ds")
    code, out, err = run_main(
        capsys, "train", "--data", root, "--arch", "compact_cnn", "--weights", "none", "--img-size", "16",
        "--epochs", "1", "--batch-size", "8", "--workspace", tmp_path / "ws",
    )  # fmt: skip
    assert code == 0, err
    assert "warning: 1 class(es) have a single image (lonely)" in err
    (run,) = runs.list_runs(tmp_path / "ws")
    assert any("lonely" in w for w in run.meta["warnings"])


def test_splits_that_cannot_be_evaluated_are_refused(capsys, tmp_path):
    root = tmp_path / "ds"
    for split, classes in (("train", ("a", "b")), ("test", ("a",))):  # the test split holds one class
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / split / cls / f"{i}.png")
    code, out, err = run_main(capsys, "train", "--data", root, "--arch", "compact_cnn", "--weights", "none",
                              "--img-size", "16", "--epochs", "1", "--workspace", tmp_path / "ws")  # fmt: skip
    assert code == 2
    assert "The test split holds a single class (a): a classifier cannot be evaluated on it" in err
    assert runs.list_runs(tmp_path / "ws") == [] and runs.unreadable_runs(tmp_path / "ws") == []


# ---- evaluate: damaged test images and class names, on a private copy of the tiny run and its data ----


@pytest.fixture
def private_run(copied_run, tiny_shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_shapes_dir, data)
    splits = pd.read_csv(copied_run.file("splits.csv"), dtype=str, keep_default_na=False)
    splits["path"] = splits["path"].str.replace(str(tiny_shapes_dir), str(data), regex=False)
    runs.atomic_write_csv(copied_run.file("splits.csv"), splits)
    test_images = splits.loc[splits["split"] == "test", "path"].tolist()
    return copied_run, test_images


def test_evaluate_names_a_deleted_test_image(capsys, private_run):
    run, test_images = private_run
    gone = test_images[2]
    import os

    os.remove(gone)
    code, out, err = run_main(capsys, "evaluate", run.id, "--workspace", run.path.parent.parent)
    assert code == 2
    assert f"1 test image(s) of the run no longer exist: {gone}" in err
    assert "Traceback" not in err and "Errno" not in err


def test_evaluate_names_an_unreadable_test_image(capsys, private_run):
    run, test_images = private_run
    broken = test_images[0]
    with open(broken, "wb") as handle:
        handle.write(b"not an image at all")
    code, out, err = run_main(capsys, "evaluate", run.id, "--workspace", run.path.parent.parent)
    assert code == 2
    assert err.startswith(f"error: The test image {broken} cannot be read: ")


@pytest.mark.parametrize(
    "class_names, message",
    [
        (["circle", "square"], "its model predicts 3 classes but run.json names 2 (circle, square)"),
        (["circle", "square", "octagon"], "The test split holds classes the model does not know: ['triangle']"),
        (..., "class_names is missing"),
    ],
)
def test_evaluate_with_missing_or_wrong_class_names_is_a_clean_error(capsys, private_run, class_names, message):
    run, _ = private_run
    meta = json.loads(run.file(runs.RUN_FILE).read_text())
    if class_names is ...:
        del meta["class_names"]
    else:
        meta["class_names"] = class_names
    run.file(runs.RUN_FILE).write_text(json.dumps(meta))
    code, out, err = run_main(capsys, "evaluate", run.id, "--workspace", run.path.parent.parent)
    assert code == 2 and message in err
    assert "Traceback" not in err
