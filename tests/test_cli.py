"""The command line. The entry point is run as users run it (``python -m core ...`` in a subprocess);
argument handling and error reporting of every subcommand also in-process through `core.__main__.main`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core import runs

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cli(*args, workspace=None, timeout=180) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # never the project's own ./workspace: commands that take no --workspace get an unused temporary path
    env["XAI_WORKSPACE"] = str(workspace or Path(tempfile.gettempdir()) / "xai-cli-tests-unused")
    return subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def run_main(capsys, *args) -> tuple[int, str, str]:
    """`core.__main__.main` in this process: (exit code, stdout, stderr); argparse exits become codes."""
    from core.__main__ import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------
# Help


def test_top_level_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m core")
    for command in ("demo", "dataset", "train", "import-model", "evaluate", "explain", "bench"):
        assert command in result.stdout


def test_parser_does_not_import_tensorflow():
    code = (
        "import sys; from core.__main__ import build_parser; build_parser(); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert last_line(result.stdout) == "[]"


@pytest.mark.parametrize(
    "command, options",
    [
        ("demo", ["--workspace", "--epochs"]),
        ("dataset", ["dir", "--seed", "--json"]),
        ("train", ["--data", "--arch", "--weights", "--epochs", "--batch-size", "--lr", "--augment", "--workspace"]),
        ("import-model", ["model", "--data", "--preprocess", "--class-names"]),
        ("evaluate", ["run", "--workspace"]),
        ("explain", ["--image", "--methods", "--out", "--class-name", "--layer-name", "--patch-size", "--alpha"]),
    ],
)
def test_subcommand_help(capsys, command, options):
    code, out, _ = run_main(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: python -m core {command}")
    for option in options:
        assert option in out, option


def test_bench_help(capsys):
    code, out, _ = run_main(capsys, "bench", "--help")
    assert code == 0
    assert "usage:" in out
    for option in ("--archs", "--image-size", "--repeats", "--json"):
        assert option in out


def test_usage_errors(capsys):
    code, _, err = run_main(capsys)
    assert code == 2 and "usage:" in err
    code, _, err = run_main(capsys, "dataset")
    assert code == 2 and "the following arguments are required: dir" in err
    code, _, err = run_main(capsys, "frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in err


# ---------------------------------------------------------------------------------------------------
# dataset


def test_dataset_json(tiny_shapes_dir):
    result = cli("dataset", tiny_shapes_dir, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == "splits"
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["images"] == 36
    assert summary["counts"] == {
        split: dict.fromkeys(("circle", "square", "triangle"), n)
        for split, n in (("train", 8), ("val", 2), ("test", 2))
    }
    assert summary["image_sizes"] == {"32x32": 36}
    assert summary["colour_modes"] == {"RGB": 36}
    assert summary["imbalance_ratio"] == 1.0
    assert summary["skipped"] == []


def test_dataset_on_a_missing_folder_is_a_clean_error(tmp_path):
    result = cli("dataset", tmp_path / "missing")
    assert result.returncode == 2
    assert (
        last_line(result.stderr)
        == f"error: Expected a folder of images. Received: {tmp_path / 'missing'} (not a folder)"
    )
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_dataset_text_lists_counts_and_skipped_files(capsys, tmp_path):
    from PIL import Image

    for cls, n in (("ants", 4), ("bees", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (9, 7)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "bees" / "readme.txt").write_text("x")
    code, out, err = run_main(capsys, "dataset", tmp_path, "--seed", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{tmp_path} (classes layout): 6 images, classes ['ants', 'bees']"
    assert any(line.split()[0] == "train" and "ants:" in line and "bees:" in line for line in lines[1:4])
    assert "9x7" in out and "RGB" in out
    assert any(line.strip().startswith("skipped") and "readme.txt" in line for line in lines)


@pytest.mark.parametrize("case", ["one-class", "no-images", "a-file"])
def test_dataset_on_a_bad_folder_is_a_clean_error(capsys, tmp_path, case):
    from PIL import Image

    target = tmp_path / "ds"
    if case == "one-class":
        (target / "only").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(target / "only" / "a.png")
    elif case == "no-images":
        for cls in ("a", "b"):
            (target / cls).mkdir(parents=True)
            (target / cls / "x.txt").write_text("x")
    else:
        target.write_text("not a folder")
    code, out, err = run_main(capsys, "dataset", target)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    expected = {"one-class": "Found one: 'only'", "no-images": "no readable image", "a-file": "(not a folder)"}[case]
    assert expected in err


# ---------------------------------------------------------------------------------------------------
# evaluate and explain on the tiny trained run (a private copy)


def test_evaluate_prints_metrics_and_records_them(copied_run):
    workspace = copied_run.path.parent.parent
    copied_run.file(runs.METRICS_FILE).unlink()
    runs.update_run(copied_run, test_accuracy=-1.0)
    result = cli("evaluate", copied_run.id, "--json", "--workspace", workspace)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {"accuracy", "roc_auc_macro", "per_class", "ece", "brier", "confidence_intervals"} <= set(printed)
    low, high = printed["confidence_intervals"]["accuracy"]
    assert low <= printed["accuracy"] <= high
    assert set(printed["confidence_intervals"]) == {"accuracy", "macro_f1", "roc_auc_macro"}
    assert 0.0 <= printed["ece"] <= 1.0 and 0.0 <= printed["brier"] <= 2.0
    written = runs.load_metrics(copied_run)
    assert written["ece"] == printed["ece"]
    assert (
        printed["accuracy"] == written["accuracy"] == pytest.approx(runs.load_predictions(copied_run)["correct"].mean())
    )
    assert printed["per_class"] == written["per_class"]
    meta = runs.read_run(copied_run.path).meta
    assert meta["test_accuracy"] == printed["accuracy"]
    assert meta["roc_auc_macro"] == printed["roc_auc_macro"]
    text = cli("evaluate", copied_run.id, "--workspace", workspace)
    assert text.returncode == 0 and "95% interval" in text.stdout and "ECE" in text.stdout


def test_evaluate_unknown_run_is_a_clean_error(capsys, tmp_path):
    code, out, err = run_main(capsys, "evaluate", "no-such-run", "--workspace", tmp_path)
    assert code == 2 and out == ""
    assert err.startswith("error: No run named 'no-such-run'")
    assert "Known runs: none" in err
