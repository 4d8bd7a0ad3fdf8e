"""core.trust: deletion/insertion (known answers, protocol, compiled once), pointing game, energy, top-k IoU."""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 16
ROWS, COLS = slice(2, 6), slice(9, 13)  # the only pixels the test model looks at


def _patch_model(sigmoid: bool = False):
    """Class 0 when the mean of a 4x4 patch is bright; the rest of the image is ignored."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    patch = keras.ops.mean(inputs[:, ROWS, COLS, :], axis=(1, 2, 3)) / 255.0
    logit = 12.0 * (patch - 0.8)
    if sigmoid:
        outputs = keras.ops.expand_dims(keras.ops.sigmoid(-2.0 * logit), -1)  # p(class 1) = 1 - p(class 0)
    else:
        outputs = keras.ops.softmax(keras.ops.stack([logit, -logit], axis=-1), axis=-1)
    return keras.Model(inputs, outputs)


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 90, (SIZE, SIZE, 3)).astype(np.float32)
    image[ROWS, COLS] = 250.0
    return image


def _true_map() -> np.ndarray:
    saliency = np.zeros((SIZE, SIZE), np.float32)
    saliency[ROWS, COLS] = 1.0
    return saliency


@pytest.fixture(scope="module")
def model():
    return _patch_model()


def test_map_on_the_used_pixels_beats_inverted_and_random_maps(model):
    from core.trust import deletion_insertion, random_map

    image = _image()
    good = deletion_insertion(model, image, _true_map(), 0)
    inverted = deletion_insertion(model, image, 1.0 - _true_map(), 0)
    for seed in range(3):
        random = deletion_insertion(model, image, random_map((SIZE, SIZE), seed), 0)
        assert good["deletion_auc"] < random["deletion_auc"] - 0.1
        assert good["insertion_auc"] > random["insertion_auc"] + 0.2
    assert good["deletion_auc"] < inverted["deletion_auc"] - 0.5
    assert good["insertion_auc"] > inverted["insertion_auc"] + 0.5
    # The patch is 16 of 256 pixels: deleting them (point 1 changes 13, point 2 changes 26) kills class 0.
    assert good["deletion_curve"][0] > 0.98 and good["deletion_curve"][1] < 0.01
    assert good["deletion_auc"] < 0.08 and good["insertion_auc"] > 0.9


def test_protocol_points_baselines_and_auc(model):
    from core.trust import deletion_insertion, pixels_changed

    image = _image(1)
    result = deletion_insertion(model, image, _true_map(), 0, steps=8, deletion_baseline="grey")
    assert len(result["deletion_curve"]) == len(result["insertion_curve"]) == 9
    assert result["pixels_changed"] == [round(k * 256 / 8) for k in range(9)] == pixels_changed(16, 16, 8)
    assert result["fractions"][0] == 0.0 and result["fractions"][-1] == 1.0
    assert (result["steps"], result["deletion_baseline"], result["insertion_baseline"]) == (8, "grey", "blur")
    probs = np.asarray(model(image[None]))[0]
    assert result["deletion_curve"][0] == pytest.approx(float(probs[0]), abs=1e-5)
    assert result["insertion_curve"][-1] == pytest.approx(float(probs[0]), abs=1e-5)
    grey = np.asarray(model(np.full((1, SIZE, SIZE, 3), 127.5, np.float32)))[0, 0]
    assert result["deletion_curve"][-1] == pytest.approx(float(grey), abs=1e-5)
    fractions, curve = np.asarray(result["fractions"]), np.asarray(result["deletion_curve"])
    trapezoid = float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2)
    assert result["deletion_auc"] == pytest.approx(trapezoid)
    # Python's round: 2.5 -> 2 (k * H * W / K with H * W = 5, K = 2).
    assert pixels_changed(1, 5, 2) == [0, 2, 5]


def test_ties_are_broken_by_flat_index():
    from core.trust import pixel_order, pixel_ranks

    saliency = np.array([[0.5, 1.0, 0.5], [1.0, 0.0, 0.5]])
    assert pixel_order(saliency).tolist() == [1, 3, 0, 2, 5, 4]
    assert pixel_ranks(saliency).tolist() == [[2, 0, 3], [1, 5, 4]]


def test_one_compiled_function_small_batches_same_curves_and_sigmoid_models(model):
    from core import trust

    image = _image(2)
    first = trust.deletion_insertion(model, image, _true_map(), 0, batch_size=5)
    function = trust._FUNCTIONS[model][(SIZE, SIZE, 5)]
    again = trust.deletion_insertion(model, _image(3), np.random.default_rng(0).random((SIZE, SIZE)), 1, batch_size=5)
    assert function.experimental_get_tracing_count() == 1
    assert again["class_index"] == 1
    whole = trust.deletion_insertion(model, image, _true_map(), 0, batch_size=64)
    np.testing.assert_allclose(first["deletion_curve"], whole["deletion_curve"], atol=1e-6)
    np.testing.assert_allclose(first["insertion_curve"], whole["insertion_curve"], atol=1e-6)

    sigmoid = trust.deletion_insertion(_patch_model(sigmoid=True), image, _true_map(), 0)
    np.testing.assert_allclose(sigmoid["deletion_curve"], whole["deletion_curve"], atol=1e-5)


def test_bad_inputs_say_what_was_received(model):
    from core.trust import TrustError, deletion_insertion

    with pytest.raises(TrustError, match="sizes must match"):
        deletion_insertion(model, _image(), np.zeros((8, 8)), 0)
    with pytest.raises(TrustError, match="Unknown deletion_baseline.*'white'"):
        deletion_insertion(model, _image(), _true_map(), 0, deletion_baseline="white")
    with pytest.raises(TrustError, match="steps=0"):
        deletion_insertion(model, _image(), _true_map(), 0, steps=0)


def test_random_reference_and_ranking(model):
    from core.trust import deletion_insertion, random_reference, rank_methods

    image = _image()
    reference = random_reference(model, image, 0, repeats=2)
    good = deletion_insertion(model, image, _true_map(), 0)
    bad = deletion_insertion(model, image, 1.0 - _true_map(), 0)
    assert len(reference["deletion_curve"]) == 21 and reference["repeats"] == 2
    assert good["deletion_auc"] < reference["deletion_auc"] < bad["deletion_auc"]
    assert [name for name, _ in rank_methods({"bad": bad, "good": good})] == ["good", "bad"]


def test_faithfulness_of_several_maps_with_reference_and_ranking(model):
    from core.trust import faithfulness

    result = faithfulness(
        model, _image(), {"good": _true_map(), "inverted": 1 - _true_map(), "failed": None}, 0, steps=10
    )
    assert set(result["methods"]) == {"good", "inverted"} and len(result["methods"]["good"]["deletion_curve"]) == 11
    assert [name for name, _ in result["ranking"]] == ["good", "inverted"]
    assert result["methods"]["good"]["insertion_auc"] > result["random"]["insertion_auc"]
    assert result["protocol"]["steps"] == 10 and result["random"]["repeats"] == 3


def test_pointing_game_by_hand():
    from core.trust import pointing_game

    saliency = np.array([[0.1, 0.2, 0.3], [0.4, 0.9, 0.0], [0.0, 0.0, 0.9]])
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    assert pointing_game(saliency, mask) is True  # maximum 0.9 first at flat index 4 = (1, 1)
    mask2 = np.zeros((3, 3), bool)
    mask2[2, 2] = True
    assert pointing_game(saliency, mask2) is False  # the tie goes to (1, 1)
    assert pointing_game(saliency, mask2, tolerance=1) is False
    assert pointing_game(saliency, mask2, tolerance=2) is True  # (1, 1) is sqrt(2) from (2, 2)
    assert pointing_game(saliency, np.zeros((3, 3), bool), tolerance=3) is False


def test_energy_pointing_game_by_hand():
    from core.trust import energy_pointing_game

    saliency = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert energy_pointing_game(saliency, np.array([[True, False], [False, True]])) == pytest.approx(0.5)
    assert energy_pointing_game(saliency, np.array([[False, False], [True, False]])) == pytest.approx(0.3)
    assert energy_pointing_game(np.array([[-5.0, 1.0], [1.0, 2.0]]), np.eye(2, dtype=bool)) == pytest.approx(0.5)
    assert energy_pointing_game(np.zeros((2, 2)), np.eye(2, dtype=bool)) == 0.0


def test_top_k_iou_by_hand():
    from core.trust import TrustError, localisation, top_k_iou

    saliency = np.array([[0.9, 0.8, 0.1, 0.0], [0.7, 0.2, 0.0, 0.0]])  # order: 0, 1, 4, 5, 2, ...
    mask = np.array([[True, True, False, False], [False, True, False, False]])
    assert top_k_iou(saliency, mask, percent=25) == pytest.approx(2 / 3)  # top 2 {0,1} vs mask {0,1,5}
    assert top_k_iou(saliency, mask) == pytest.approx(2 / 4)  # top 3 {0,1,4}: 2 shared, union 4
    assert top_k_iou(saliency, mask, percent=50) == pytest.approx(3 / 4)  # top 4 {0,1,4,5}
    scores = localisation(saliency, mask)
    assert scores["pointing_game"] is True and scores["top_k_iou"] == pytest.approx(0.5)
    with pytest.raises(TrustError, match="mask of the map's shape"):
        top_k_iou(saliency, np.ones((3, 3), bool))
    with pytest.raises(TrustError, match="percent=0"):
        top_k_iou(saliency, mask, percent=0)


def test_spearman_known_values():
    from core.trust import spearman

    a = np.arange(9.0).reshape(3, 3)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.ones((3, 3))) == 0.0


# ---- the trust command over a run (every method in the registry) -----------------------------------


def test_trust_command_scores_every_method_and_saves_trust_json(copied_run, tmp_path, capsys):
    import json

    from core.cli_trust import main
    from core.explain import METHODS
    from core.trust_report import TRUST_FILE, load_trust

    model_bytes = copied_run.model_path.read_bytes()
    argv = ["trust", copied_run.id, "--workspace", str(tmp_path / "ws"), "--limit", "2", "--sanity-images", "1"]
    assert main([*argv, "--json", "--fast"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and report["masks"] == 2
    assert report["protocol"]["steps"] == 20 and report["protocol"]["deletion_baseline"] == "black"
    assert report["library_versions"]["numpy"] == np.__version__
    assert set(report["methods"]) == set(METHODS)
    for method, entry in report["methods"].items():
        assert "error" not in entry, (method, entry)
        assert 0.0 <= entry["deletion_auc"] <= 1.0 and 0.0 <= entry["insertion_auc"] <= 1.0
        assert len(entry["mean_deletion_curve"]) == 21
        assert entry["localisation"]["images"] == 2 and 0.0 <= entry["localisation"]["energy_pointing_game"] <= 1.0
        assert isinstance(entry["randomisation"]["passed"], bool) and len(entry["randomisation"]["stages"]) >= 2
        assert isinstance(entry["class_sensitivity"]["class_sensitive"], bool)
    assert sorted(r["method"] for r in report["ranking"]) == sorted(METHODS)
    saved = load_trust(copied_run)
    assert saved["methods"].keys() == report["methods"].keys() and (copied_run.path / TRUST_FILE).is_file()
    assert saved["strips"][METHODS[0]].shape[1:] == (32, 32)
    assert copied_run.model_path.read_bytes() == model_bytes  # the run's model is never changed

    assert main([*argv, "--methods", "vanilla_gradients"]) == 0
    out = capsys.readouterr().out
    assert "vanilla_gradients: deletion AUC" in out and "random map: deletion AUC" in out

    assert main([*argv, "--methods", "no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err


def test_explanation_drift_callback_saves_one_map_per_epoch(tiny_shapes_dir, tmp_path):
    import pandas as pd

    from core import runs
    from core.drift import ExplanationDrift, load_drift, probe_set
    from core.models import build_model

    files = sorted((tiny_shapes_dir / "test").glob("*/*.png"))
    split = pd.DataFrame({"path": [str(f) for f in files], "class_name": [f.parent.name for f in files]})
    probes = probe_set(split, per_class=1)
    assert list(probes["class_name"]) == ["circle", "square", "triangle"]
    classes = [["circle", "square", "triangle"].index(c) for c in probes["class_name"]]
    model = build_model("compact_cnn", 3, 32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    callback = ExplanationDrift(tmp_path, probes["path"], classes, (32, 32), method="vanilla_gradients")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32), rng.integers(0, 3, 16)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    drift = load_drift(runs.Run(tmp_path, {}))
    assert drift["epochs"] == [1, 2] and drift["maps"].shape == (2, 3, 32, 32) and drift["error"] is None
    assert drift["maps"].min() >= 0.0 and drift["maps"].max() <= 1.0
    assert not np.allclose(drift["maps"][0], drift["maps"][1])  # the weights changed between epochs


def test_masks_found_for_the_demo_layout_and_a_mirrored_masks_folder(tiny_shapes_dir, tmp_path):
    from PIL import Image

    from core.masks import draw_outline, mask_path, masks_for, outline

    image = sorted((tiny_shapes_dir / "test" / "circle").glob("*.png"))[0]
    assert mask_path(image, tiny_shapes_dir) == tiny_shapes_dir / "masks" / "test" / "circle" / image.name
    (mask,) = masks_for([image], tiny_shapes_dir, (16, 16))
    assert mask.shape == (16, 16) and mask.dtype == bool and 0 < mask.sum() < 256

    user = tmp_path / "user"
    (user / "cats").mkdir(parents=True)
    (user / "masks" / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(user / "cats" / "a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(user / "cats" / "b.jpg")
    drawn = np.zeros((8, 8), np.uint8)
    drawn[2:6, 2:6] = 255
    Image.fromarray(drawn).save(user / "masks" / "cats" / "a.png")  # PNG mask beside a JPEG image
    found = masks_for([user / "cats" / "a.jpg", user / "cats" / "b.jpg", tmp_path / "elsewhere.png"], user, (8, 8))
    assert found[0].sum() == 16 and found[1] is None and found[2] is None
    assert outline(found[0]).sum() == 12  # the 4x4 square's boundary
    picture = draw_outline(np.zeros((8, 8, 3), np.uint8), found[0])
    assert picture[2, 2].tolist() == [255, 255, 255] and picture[3, 3].tolist() == [0, 0, 0]


def test_bench_trust_ratios_on_a_tiny_model(capsys):
    from core.bench_trust import audit_throughput_ratio, bench_trust, deletion_insertion_ratio
    from core.models import build_model

    model = build_model("compact_cnn", 3, 16)
    curves = deletion_insertion_ratio(model, steps=4, batch_size=8, repeats=1)
    assert curves["images"] == 10 and curves["seconds"] > 0 and curves["floor_seconds"] > 0
    assert curves["ratio"] == pytest.approx(curves["seconds"] / curves["floor_seconds"])
    audit = audit_throughput_ratio(model, images=4, batch_size=2, repeats=1)
    assert audit["gradcam_images_per_second"] > 0 and audit["inference_images_per_second"] > 0
    assert audit["ratio"] == pytest.approx(audit["gradcam_images_per_second"] / audit["inference_images_per_second"])
    assert callable(bench_trust)
