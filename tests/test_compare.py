"""core.compare: methods side by side with raw ranges, batches, two models, original aspect, files."""

from __future__ import annotations

import io
import json
import zipfile

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from core import compare
from core.explain import METHODS, describe, explain


def cnn(size=(16, 16), seed=0, prefix="conv"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*size, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{prefix}1")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{prefix}2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(3)(x)
    return keras.Model(inputs, layers.Activation("softmax")(x))


def blind(size=(16, 16)):
    """A model whose output does not depend on its input (zero kernel): every map has no signal."""
    inputs = keras.Input((*size, 3))
    x = layers.Flatten()(inputs)
    dense = layers.Dense(3, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([2.0, 0.0, 0.0]))
    return keras.Model(inputs, layers.Activation("softmax")(dense(x)))


@pytest.fixture(scope="module")
def model():
    return cnn()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)


def test_every_method_side_by_side_matches_explain(model, image):
    probs, results = compare.explain_side_by_side(model, image, list(METHODS), class_index=1)
    assert probs.shape == (3,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert [r.method for r in results] == list(METHODS)
    for result in results:
        info = describe(result.method, (16, 16))
        assert result.error is None, result.error
        assert result.saliency.shape == result.raw.shape == (16, 16)
        assert result.saliency.dtype == result.raw.dtype == np.float32
        assert result.saliency.min() >= 0.0 and result.saliency.max() <= 1.0
        assert result.raw_range == (float(result.raw.min()), float(result.raw.max()))
        assert result.units == info["units"] and result.signed == info["signed"]
        assert set(result.params) == set(info["params"])
        assert result.target == 1 and result.probability == pytest.approx(float(probs[1]))
        assert result.seconds > 0
        if not info["signed"]:
            assert result.raw.min() >= 0.0
        # one computation gives both maps: they are what explain() gives for each normalize
        expected = explain(model, image[None], result.method, class_index=1, **result.params)[0]
        np.testing.assert_allclose(result.saliency, expected, atol=1e-5, err_msg=result.method)
        raw = explain(model, image[None], result.method, class_index=1, normalize=False, **result.params)[0]
        np.testing.assert_allclose(result.raw, raw, rtol=1e-5, atol=1e-7, err_msg=result.method)


def test_parameters_default_to_describe_for_the_input_size_and_are_passed(model, image):
    params = compare.effective_params("occlusion", (16, 16), {"patch_size": 2})
    assert params == {
        **{k: v["default"] for k, v in describe("occlusion", (16, 16))["params"].items()},
        "patch_size": 2,
    }
    _, results = compare.explain_side_by_side(model, image, ["occlusion"], params={"occlusion": {"patch_size": 2}})
    assert results[0].params["patch_size"] == 2
    expected = explain(model, image[None], "occlusion", class_index=results[0].target, patch_size=2, batch_size=64)
    np.testing.assert_allclose(results[0].saliency, expected[0], atol=1e-6)


def test_a_method_that_cannot_apply_gives_an_error_and_the_others_still_run(image):
    flat = blind()
    _, results = compare.explain_side_by_side(
        flat, image, ["gradcam", "vanilla_gradients", "occlusion"], params={"occlusion": {"radius": 3}}
    )
    gradcam, gradients, occlusion = results
    assert gradcam.saliency is None and gradcam.raw is None and "gradcam" in gradcam.error
    assert gradcam.raw_range is None and gradcam.note is None
    assert occlusion.error and "radius" in occlusion.error
    assert gradients.error is None
    assert gradients.note.startswith("No signal")  # the blind model's gradient is zero everywhere
    _, (occluded,) = compare.explain_side_by_side(flat, image, ["occlusion"])
    assert occluded.note.startswith("No signal")


def test_notes_for_weak_signal():
    result = compare.MethodResult("m", np.zeros((2, 2), np.float32), 0.1, raw=np.full((2, 2), 3.0, np.float32))
    assert result.note == "No signal: the raw map is flat (every value 3)."
    result.raw = np.array([[0.0, 1e-3]], np.float32)
    assert result.note is None
    result.raw = np.array([[0.0, 1e-8]], np.float32)
    assert result.note.startswith("No signal: the raw map is almost zero")
    assert "0.10%" in compare.weak_target_note(0.001, "cat") and "**cat**" in compare.weak_target_note(0.001, "cat")
    assert compare.weak_target_note(0.5, "cat") is None


def test_a_batch_is_explained_in_one_call_per_method(model, image):
    rng = np.random.default_rng(1)
    batch = np.stack([image, rng.integers(0, 256, (16, 16, 3)), rng.integers(0, 256, (16, 16, 3))]).astype(np.uint8)
    probs, per_image = compare.explain_batch(model, batch, ["gradcam", "vanilla_gradients"], class_index=[0, 1, 2])
    assert probs.shape == (3, 3) and len(per_image) == 3
    for i, results in enumerate(per_image):
        assert [r.target for r in results] == [i, i]
        _, single = compare.explain_side_by_side(model, batch[i], ["gradcam", "vanilla_gradients"], class_index=i)
        for got, alone in zip(results, single):
            np.testing.assert_allclose(got.saliency, alone.saliency, atol=1e-5)
    assert per_image[0][0].seconds == per_image[2][0].seconds  # the batch's time, shared
    _, predicted = compare.explain_batch(model, batch, ["vanilla_gradients"])
    assert [r[0].target for r in predicted] == list(np.argmax(probs, axis=1))
    with pytest.raises(ValueError, match="one class index per image"):
        compare.explain_batch(model, batch, ["gradcam"], class_index=[0, 1])
    with pytest.raises(ValueError, match=r"Expected a batch of RGB images \(N, H, W, 3\)"):
        compare.explain_batch(model, image, ["gradcam"])


def test_two_models_on_the_same_image_each_at_its_own_size():
    big, small = cnn((24, 24), seed=1), cnn((16, 16), seed=2, prefix="c")
    photo = np.random.default_rng(3).integers(0, 256, (15, 20, 3)).astype(np.uint8)
    params = {"gradcam": {"layer_name": "conv1"}, "occlusion": {"patch_size": 12}}
    first, second = compare.compare_models([big, small], photo, ["gradcam", "occlusion"], class_index=2, params=params)
    assert first.image.shape == (24, 24, 3) and second.image.shape == (16, 16, 3)
    assert [r.saliency.shape for r in first.results] == [(24, 24)] * 2
    assert [r.saliency.shape for r in second.results] == [(16, 16)] * 2
    assert first.results[0].params["layer_name"] == "conv1" and first.results[1].params["patch_size"] == 12
    assert second.results[0].params["layer_name"] is None  # no conv1 there: its default layer
    assert second.results[1].params["patch_size"] == describe("occlusion", (16, 16))["params"]["patch_size"]["maximum"]
    assert all(r.error is None and r.target == 2 for m in (first, second) for r in m.results)
    with pytest.raises(ValueError, match="one class index per model"):
        compare.compare_models([big, small], photo, ["gradcam"], class_index=[0])


def test_validate_and_adapt_params(model):
    checked = compare.validate_params(model, ["occlusion", "gradcam"], {"occlusion": {"patch_size": 4}})
    assert checked["occlusion"]["patch_size"] == 4 and checked["gradcam"]["layer_name"] is None
    with pytest.raises(ValueError, match="patch_size"):
        compare.validate_params(model, ["occlusion"], {"occlusion": {"patch_size": 40}})
    with pytest.raises(ValueError, match=r"expected parameters among .*Received: size"):
        compare.validate_params(model, ["occlusion"], {"occlusion": {"size": 4}})
    adapted = compare.adapt_params(model, "occlusion", {"patch_size": 100, "stride": None, "batch_size": 0})
    assert adapted == {"patch_size": 8, "stride": None, "batch_size": 1}
    assert compare.adapt_params(model, "gradcam", {"layer_name": "nope", "use_softmax": True}) == {
        "layer_name": None,
        "use_softmax": True,
    }


def test_maps_go_back_to_the_original_aspect_ratio():
    saliency = np.zeros((48, 48), np.float32)
    saliency[:24] = 1.0  # top half
    back = compare.map_to_original(saliency, (150, 200, 3))
    assert back.shape == (150, 200) and back.min() >= 0.0 and back.max() <= 1.0
    assert back[10].min() == 1.0 and back[140].max() == 0.0
    assert compare.map_to_original(saliency, (3000, 4000), max_side=512).shape == (384, 512)
    photo = np.zeros((3000, 4000, 3), np.uint8)
    assert compare.display_image(photo, 512).shape == (384, 512, 3)
    assert compare.display_image(photo[:150, :200]).shape == (150, 200, 3)


def test_explanation_files_and_report(model, image):
    probs, results = compare.explain_side_by_side(model, image, ["gradcam", "occlusion"])
    results.append(compare.MethodResult("vanilla_gradients", None, 0.01, error="cannot apply", params={}))
    picture = np.full((30, 40, 3), 120, np.uint8)
    files, report = compare.explanation_files(
        picture, probs, results, ["a", "b", "c"], alpha=0.3, colormap="viridis", extra={"run": "r1"}
    )
    assert json.loads(files["explanation.json"]) == report
    assert report["run"] == "r1" and report["image_size"] == [30, 40]
    assert report["predicted_class"] == "abc"[int(np.argmax(probs))] == report["target_class"]
    assert report["methods"]["vanilla_gradients"] == {
        "seconds": 0.01, "parameters": {}, "units": "", "signed": False, "error": "cannot apply"
    }  # fmt: skip
    assert not any(name.startswith("vanilla_gradients") for name in files)
    for result in results[:2]:
        entry = report["methods"][result.method]
        assert (entry["raw_min"], entry["raw_max"]) == result.raw_range
        assert entry["parameters"] == result.params and entry["model_input_size"] == [16, 16]
        for kind in ("overlay", "heatmap"):
            assert Image.open(io.BytesIO(files[entry[kind]])).size == (40, 30)
        assert np.load(io.BytesIO(files[entry["map"]])).shape == (30, 40)
    with np.load(io.BytesIO(files["raw_maps.npz"])) as maps:
        assert set(maps.files) == {"gradcam", "gradcam_model_input", "occlusion", "occlusion_model_input"}
        np.testing.assert_array_equal(maps["occlusion_model_input"], results[1].raw)
        assert maps["occlusion"].shape == (30, 40)
    assert "numpy" in report["versions"] and "python" in report["versions"]
    with zipfile.ZipFile(io.BytesIO(compare.zip_bytes({"run/a.txt": b"x", "b.bin": b"yz"}))) as archive:
        assert archive.read("run/a.txt") == b"x" and archive.read("b.bin") == b"yz"
