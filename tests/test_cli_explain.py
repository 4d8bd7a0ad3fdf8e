"""`python -m core explain`: maps, overlays and a report per image; every argument checked first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_cli import cli, run_main

from core import runs
from core.cli_explain import parse_methods, parse_params, parse_value


def test_explain_writes_maps_overlays_and_a_report(copied_run, tmp_path):
    image = runs.load_predictions(copied_run)["path"].iloc[0]
    out = tmp_path / "out"
    result = cli(
        "explain", copied_run.id, "--image", image, "--methods", "gradcam,occlusion", "--out", out,
        "--class-name", "square", "--param", "occlusion.patch_size=8", "--param", "gradcam.use_softmax=true",
        "--workspace", copied_run.path.parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "explanation.json").read_text())
    assert json.loads(result.stdout) == report
    assert report["run"] == copied_run.id
    assert report["target_class"] == "square"
    assert set(report["probabilities"]) == {"circle", "square", "triangle"}
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["predicted_class"] == max(report["probabilities"], key=report["probabilities"].get)
    assert {"python", "numpy", "keras"} <= set(report["versions"])
    entry = report["methods"]["gradcam"]
    assert "error" not in entry and entry["seconds"] >= 0
    assert entry["parameters"] == {"layer_name": None, "use_guided_grads": False, "use_softmax": True}
    assert report["methods"]["occlusion"]["parameters"]["patch_size"] == 8
    saliency = np.load(out / entry["map"])
    assert saliency.shape == (32, 32) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    raw = np.load(out / entry["raw"])
    assert (float(raw.min()), float(raw.max())) == pytest.approx((entry["raw_min"], entry["raw_max"]))
    assert Image.open(out / entry["overlay"]).size == (32, 32)
    assert Image.open(out / "gradcam_heatmap.png").size == (32, 32)
    with np.load(out / "raw_maps.npz") as maps:
        assert set(maps.files) == {"gradcam", "gradcam_model_input", "occlusion", "occlusion_model_input"}
        np.testing.assert_allclose(maps["occlusion"], np.load(out / "occlusion_raw.npy"))
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "input.png")), np.asarray(Image.open(image).convert("RGB"))
    )


def _save(path, width, height, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_batch_of_folders_and_files_at_original_sizes(capsys, copied_run, tmp_path):
    photos = tmp_path / "photos"
    _save(photos / "wide.png", 40, 30)
    _save(photos / "nested" / "tall.jpg", 20, 36)
    _save(photos / "nested" / "wide.png", 32, 32)  # same stem as photos/wide.png: its own folder
    single = tmp_path / "single.bmp"
    _save(single, 50, 25)
    out = tmp_path / "out"
    code, stdout, stderr = run_main(
        capsys, "explain", copied_run.id, "--images", photos, single, "--methods", "vanilla_gradients,occlusion",
        "--param", "occlusion.patch_size=4", "--batch-size", "3", "--out", out, "--workspace",
        copied_run.path.parent.parent,
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    folders = {entry["folder"].split("/")[-1]: entry for entry in summary["images"]}
    assert set(folders) == {"nested__tall", "nested__wide", "wide", "single"}
    assert "4/4 images" in stderr and "3/4 images" in stderr  # two batches, progress on stderr
    for name, (height, width) in {"wide": (30, 40), "nested__tall": (36, 20), "single": (25, 50)}.items():
        report = json.loads((out / name / "explanation.json").read_text())
        assert report["image_size"] == [height, width]
        assert report["model_input_size"] == [32, 32]
        for method in ("vanilla_gradients", "occlusion"):
            assert np.load(out / name / f"{method}.npy").shape == (height, width)
            assert np.load(out / name / f"{method}_raw.npy").shape == (height, width)
            assert Image.open(out / name / f"{method}_overlay.png").size == (width, height)
        with np.load(out / name / "raw_maps.npz") as maps:
            assert maps["occlusion_model_input"].shape == (32, 32)
        assert report["methods"]["occlusion"]["parameters"]["patch_size"] == 4


def test_a_corrupt_file_in_a_folder_is_skipped_and_reported(capsys, copied_run, tmp_path):
    photos = tmp_path / "photos"
    _save(photos / "good.png", 32, 32)
    (photos / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    code, stdout, stderr = run_main(
        capsys, "explain", copied_run.id, "--images", photos, "--methods", "vanilla_gradients", "--out", out,
        "--workspace", copied_run.path.parent.parent,
    )  # fmt: skip
    assert code == 1
    summary = json.loads(stdout)
    (broken,) = [e for e in summary["images"] if "error" in e]
    assert broken["image"].endswith("broken.png") and "not an image" in broken["error"]
    assert (out / "good" / "explanation.json").exists() and not (out / "broken").exists()
    assert "Traceback" not in stderr


# ---- --param parsing, from describe() -------------------------------------------------------------


def _text(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_every_parameter_default_parses_back_to_itself():
    from core.explain import METHODS, describe

    for method in METHODS:
        for name, entry in describe(method)["params"].items():
            if entry["kind"] == "layer" and entry["default"] is None:
                assert parse_value(method, name, entry, "none") is None
                assert parse_value(method, name, entry, "top_conv") == "top_conv"
                continue
            parsed = parse_value(method, name, entry, _text(entry["default"]))
            assert parsed == entry["default"] and type(parsed) is type(entry["default"]), (method, name)


CHOICE = {
    "kind": "choice",
    "choices": ["black", "grey"],
    "nullable": False,
    "help": "",
    "minimum": None,
    "maximum": None,
}
INT = {"kind": "int", "choices": [], "nullable": False, "help": "", "minimum": 1, "maximum": 10}
FLOAT = {"kind": "float", "choices": [], "nullable": True, "help": "", "minimum": 0.0, "maximum": None}
BOOL = {"kind": "bool", "choices": [], "nullable": False, "help": "", "minimum": None, "maximum": None}


@pytest.mark.parametrize(
    "entry, text, expected",
    [(CHOICE, "grey", "grey"), (INT, "10", 10), (INT, "1", 1), (FLOAT, "0.25", 0.25), (FLOAT, "None", None),
     (BOOL, "Yes", True), (BOOL, "0", False)],
)  # fmt: skip
def test_parse_value_by_kind(entry, text, expected):
    value = parse_value("m", "p", entry, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "entry, text, message",
    [
        (CHOICE, "white", r"expected one of \['black', 'grey'\]. Received: 'white'"),
        (CHOICE, "none", "None is not accepted"),
        (INT, "2.5", "expected an int. Received: '2.5'"),
        (INT, "11", "between 1 and 10. Received: 11"),
        (INT, "0", "between 1 and 10"),
        (FLOAT, "-1", ">= 0.0"),
        (FLOAT, "nan", "finite"),
        (FLOAT, "abc", "expected a number"),
        (BOOL, "maybe", r"expected a bool \(true/false\)"),
    ],
)
def test_parse_value_refuses_bad_values(entry, text, message):
    with pytest.raises(ValueError, match=rf"--param m\.p: .*{message}"):
        parse_value("m", "p", entry, text)


def test_parse_methods_and_params():
    from core.explain import METHODS

    assert parse_methods("all") == list(METHODS)
    assert parse_methods(" occlusion, gradcam,occlusion ") == ["occlusion", "gradcam"]
    params = parse_params(
        ["occlusion.patch_size=6", "occlusion.stride=none"], ["gradcam", "occlusion"], {"layer_name": "top_conv"}
    )
    assert params == {"gradcam": {"layer_name": "top_conv"}, "occlusion": {"patch_size": 6, "stride": None}}
    # an explicit --param wins over an alias
    assert parse_params(["occlusion.patch_size=3"], ["occlusion"], {"patch_size": "5"}) == {
        "occlusion": {"patch_size": 3}
    }


@pytest.mark.parametrize(
    "texts, aliases, message",
    [
        (["occlusion.patch_size"], {}, "Expected --param METHOD.NAME=VALUE"),
        (["patch_size=3"], {}, "Expected --param METHOD.NAME=VALUE"),
        (["gradcam.layer_name=x"], {}, r"'gradcam' is not among the chosen methods \['occlusion'\]"),
        (["occlusion.size=3"], {}, r"occlusion takes \['batch_size', 'patch_size', 'stride'\]. Received: 'size'"),
        (["occlusion.patch_size=3", "occlusion.patch_size=4"], {}, "given twice"),
        ([], {"layer_name": "top_conv"}, "--layer-name applies to none of the chosen methods"),
        ([], {"patch_size": "big"}, "expected an int"),
    ],
)
def test_parse_params_errors(texts, aliases, message):
    with pytest.raises(ValueError, match=message):
        parse_params(texts, ["occlusion"], aliases)


# ---- every bad argument: exit 2, a clear message, nothing written ---------------------------------


def _edit_run_json(run, **fields):
    meta = json.loads((run.path / "run.json").read_text())
    meta.update(fields)
    for key in [k for k, v in fields.items() if v is None]:
        meta.pop(key)
    (run.path / "run.json").write_text(json.dumps(meta))


BAD_ARGUMENTS = {
    "alpha": (["--alpha", "5"], "expected an opacity between 0 and 1"),
    "alpha-text": (["--alpha", "half"], "expected an opacity"),
    "batch-size": (["--batch-size", "0"], "expected an int >= 1"),
    "colormap": (["--colormap", "rainbow"], "invalid choice: 'rainbow'"),
    "method": (["--methods", "gradcam,magic"], "error: Unknown method(s) ['magic']"),
    "class": (["--class-name", "zebra"], "error: Unknown class 'zebra'"),
    "param-syntax": (["--param", "occlusion.patch_size"], "Expected --param METHOD.NAME=VALUE"),
    "param-unknown": (["--param", "occlusion.radius=3"], "occlusion takes"),
    "param-value": (["--param", "occlusion.patch_size=wide"], "expected an int. Received: 'wide'"),
    "param-bound-for-size": (["--param", "occlusion.batch_size=5000"], "for the model's 32x32 input"),
    "param-layer": (["--param", "gradcam.layer_name=conv99"], "has no layer 'conv99'"),
    "layer-alias": (["--layer-name", "conv99"], "has no layer 'conv99'"),
    "patch-alias": (["--patch-size", "20"], "between 1 and 16"),
    "missing-image": (["--image", "{tmp}/nowhere.png"], "No such image file or folder"),
    "missing-folder": (["--images", "{tmp}/nowhere"], "No such image file or folder"),
    "empty-folder": (["--images", "{tmp}/empty"], "No image files"),
    "unreadable-image": (["--image", "{tmp}/notes.png"], "not an image"),
    "no-run": (["--run-id", "nope"], "No run named 'nope'"),
    "class-names-missing": (["--class-names", None], "class_names"),
    "class-names-wrong-count": (["--class-names", ["a", "b"]], "lists 2 class names"),
    "class-names-not-a-list": (["--class-names", "circle,square"], "class_names"),
    "no-images": (["--image", None], "Expected --image FILE or --images"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_exit_2_before_writing(capsys, copied_run, tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("just words")
    changes, expected = BAD_ARGUMENTS[case]
    image = runs.load_predictions(copied_run)["path"].iloc[0]
    options = {"--run-id": copied_run.id, "--image": image, "--methods": "gradcam,occlusion"}
    if changes[0] == "--class-names":
        _edit_run_json(copied_run, class_names=changes[1])
        extra = []
    elif changes[0] in options:
        options[changes[0]] = None if changes[1] is None else changes[1].format(tmp=tmp_path)
        extra = []
    else:
        extra = [c.format(tmp=tmp_path) for c in changes]
    if changes[0] == "--images":
        options["--image"] = None
        extra = changes[:1] + [changes[1].format(tmp=tmp_path)]
    argv = ["explain", options["--run-id"], "--methods", options["--methods"], "--out", tmp_path / "out"]
    argv += ["--image", options["--image"]] if options["--image"] else []
    argv += [*extra, "--workspace", copied_run.path.parent.parent]
    code, _, err = run_main(capsys, *argv)
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
