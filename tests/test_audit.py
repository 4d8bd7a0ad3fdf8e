"""core.audit: regions and shares by hand, flags on hand-made shares, the planted shortcut flagged (right class,
right corner, accuracy drop when hidden), the clean demo run flagged nowhere, method agreement, saved results."""

from __future__ import annotations

import numpy as np
import pytest

SHORTCUT_SIZE = 32
TAG_CLASS, CORNER = "circle", "top_right"


def test_regions_by_hand():
    from core.audit import REGIONS, region_masks, uniform_shares

    masks = region_masks(20, 20)
    assert list(masks) == list(REGIONS)
    assert masks["top_left"].sum() == 25 and masks["top_left"][:5, :5].all()  # 25% of 20 = 5
    assert masks["bottom_right"][15:, 15:].all() and masks["bottom_right"].sum() == 25
    assert masks["border"].sum() == 400 - 16 * 16  # a 2-pixel band (10% of 20) on every side
    assert masks["centre"][5:15, 5:15].all() and masks["centre"].sum() == 100
    assert uniform_shares(20, 20)["top_right"] == pytest.approx(0.0625)


def test_region_shares_and_hiding_by_hand():
    from core.audit import REGIONS, hide_region, region_shares

    maps = np.zeros((2, 20, 20))
    maps[0, 0, 0] = 3.0  # top-left corner and border
    maps[0, 10, 10] = 1.0  # centre
    shares = region_shares(maps)
    expected = {"border": 0.75, "top_left": 0.75, "top_right": 0.0, "centre": 0.25}
    for name, value in expected.items():
        assert shares[0, REGIONS.index(name)] == pytest.approx(value)
    assert shares[1, REGIONS.index("top_left")] == pytest.approx(0.0625)  # a zero map counts as uniform
    images = np.full((1, 20, 20, 3), 10.0)
    hidden = hide_region(images, "bottom_left")
    assert (hidden[0, 15:, :5] == 127.5).all() and (hidden[0, :15] == 10.0).all() and images.max() == 10.0


def test_flags_on_hand_made_shares():
    from core.audit import flag_classes, flag_text, uniform_shares

    uniform = uniform_shares(32, 32)
    plain = {r: uniform[r] for r in uniform}
    tagged = {**plain, "top_right": 0.30, "border": 0.45}
    flags = flag_classes({"a": plain, "b": tagged, "c": dict(plain)}, uniform)
    assert flags["b"]["flagged"] and flags["b"]["region"] == "top_right"
    assert flags["b"]["share"] == pytest.approx(0.30) and flags["b"]["others_share"] == pytest.approx(0.0625)
    assert not flags["a"]["flagged"] and flags["a"]["region"] is None and not flags["c"]["flagged"]
    entry = {**flags["b"], "accuracy_before": 1.0, "accuracy_after": 0.2}
    entry.update(others_accuracy_before=0.9, others_accuracy_after=0.9)
    assert "relies on it" in flag_text("b", entry)
    assert "partly relies" in flag_text("b", {**entry, "accuracy_after": 0.95})
    assert "no accuracy drop" in flag_text("b", {**entry, "accuracy_after": 0.99})
    # The other classes lose as much when the region is hidden: not the class's own shortcut.
    assert "no accuracy drop" in flag_text("b", {**entry, "accuracy_after": 0.7, "others_accuracy_after": 0.6})
    # Every class concentrating on the border equally: nothing stands out.
    border = {**plain, "border": 0.6}
    assert not any(f["flagged"] for f in flag_classes({"a": border, "b": dict(border)}, uniform).values())


def test_balanced_head_takes_classes_in_turn():
    import pandas as pd

    from core.audit import balanced_head

    frame = pd.DataFrame({"path": list("abcdef"), "class_name": ["x", "x", "x", "y", "y", "z"]})
    assert list(balanced_head(frame, 4)["path"]) == ["a", "d", "f", "b"]
    assert len(balanced_head(frame, None)) == 6


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    """The planted shortcut: every circle tagged in the top-right corner; compact CNN, 32 px, 60 per class.

    Checked with seeds 0-3: the model learns the tag every time and occlusion flags it every time."""
    from core.shortcut_demo import shortcut_dataset
    from core.training import TrainingConfig, train

    workspace = tmp_path_factory.mktemp("shortcut")
    dataset = shortcut_dataset(
        workspace / "data", per_class=60, image_size=SHORTCUT_SIZE, seed=0, tag_class=TAG_CLASS, corner=CORNER
    )
    config = TrainingConfig(
        arch="compact_cnn", image_size=SHORTCUT_SIZE, epochs=12, batch_size=8, learning_rate=2e-3, seed=0
    )
    run = train(workspace, dataset, config, name="shortcut")
    assert run.is_complete
    return run


def test_planted_shortcut_is_flagged_with_class_corner_and_accuracy_drop(shortcut_run):
    from core.audit import AUDIT_FILE, audit_run, load_audit
    from core.shapes import DEMO_CLASSES

    seen = []
    report = audit_run(
        shortcut_run,
        "occlusion",
        agreement_images=4,
        agreement_methods=["vanilla_gradients", "gradcam"],
        progress=lambda fraction, message: seen.append(fraction),
    )
    assert report["flagged"] == [TAG_CLASS]
    tagged = report["classes"][TAG_CLASS]
    assert tagged["region"] == CORNER and tagged["flagged"] is True
    assert tagged["share"] > 2.5 * tagged["uniform_share"] and tagged["share"] > 2 * tagged["others_share"]
    assert tagged["accuracy_before"] - tagged["accuracy_after"] >= 0.2  # hiding the tag breaks the class
    assert "relies on it" in tagged["text"]
    for name in DEMO_CLASSES:
        if name != TAG_CLASS:
            assert report["classes"][name]["flagged"] is False and report["classes"][name]["region"] is None
    assert seen and seen[-1] == 1.0
    assert report["mean_maps"][TAG_CLASS].shape == (SHORTCUT_SIZE, SHORTCUT_SIZE)
    matrix = np.asarray(report["agreement"]["matrix"])
    assert matrix.shape == (2, 2) and np.allclose(np.diag(matrix), 1.0) and np.allclose(matrix, matrix.T)
    assert (shortcut_run.path / AUDIT_FILE).is_file()
    saved = load_audit(shortcut_run)
    assert saved["flagged"] == [TAG_CLASS] and saved["library_versions"]["numpy"] == np.__version__
    np.testing.assert_allclose(saved["mean_maps"][TAG_CLASS], report["mean_maps"][TAG_CLASS])


def test_clean_demo_run_flags_nothing(app_workspace):
    from core import runs
    from core.audit import audit_run

    run = runs.latest_complete_run(app_workspace)
    for method in ("vanilla_gradients", "gradcam", "occlusion"):
        report = audit_run(run, method, agreement_images=0, save=False)
        assert report["flagged"] == [], {c: e["text"] for c, e in report["classes"].items()}
        assert all(e["region"] is None for e in report["classes"].values())
        assert sum(e["images"] for e in report["classes"].values()) == report["images"] > 0


def test_method_agreement_identical_and_opposite_maps():
    from core.trust import spearman

    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8))
    assert np.mean([spearman(x, x) for x in a]) == pytest.approx(1.0)
    assert np.mean([spearman(x, -x) for x in a]) == pytest.approx(-1.0)


def test_audit_command_json_and_text(shortcut_run, capsys):
    import json

    from core.cli_trust import build_parser, main

    workspace = str(shortcut_run.path.parent.parent)
    argv = ["audit", shortcut_run.id, "--workspace", workspace, "--method", "occlusion"]
    assert main([*argv, "--json", "--agreement-images", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    tagged = report["classes"][TAG_CLASS]
    assert tagged["flagged"] is True and tagged["region"] == CORNER and tagged["share"] > 0.15
    assert tagged["accuracy_before"] > tagged["accuracy_after"]
    assert {"flagged", "region", "share", "accuracy_before", "accuracy_after"} <= set(report["classes"]["square"])
    assert main([*argv, "--limit", "6", "--agreement-images", "0"]) == 0
    out = capsys.readouterr().out
    assert "on 6 test images" in out and "hiding the" in out
    assert main(["audit", shortcut_run.id, "--workspace", workspace, "--method", "nope"]) == 2
    assert "Unknown method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["audit", "x", "--limit", "0"])


def test_confusion_cell_maps_for_both_classes(shortcut_run):
    from core.audit import confusion_cell_maps
    from core.model_import import load_run_model

    model = load_run_model(shortcut_run.path)
    paths = [str(p) for p in sorted((shortcut_run.path.parent.parent / "data" / "test" / "square").glob("*.png"))[:3]]
    cell = confusion_cell_maps(model, paths, 1, 0, ["gradcam", "vanilla_gradients"])
    assert cell["images"].shape == (3, SHORTCUT_SIZE, SHORTCUT_SIZE, 3) and cell["probabilities"].shape == (3, 3)
    for method in ("gradcam", "vanilla_gradients"):
        maps_a, maps_b = cell["maps"][method]["true"], cell["maps"][method]["predicted"]
        assert maps_a.shape == maps_b.shape == (3, SHORTCUT_SIZE, SHORTCUT_SIZE)
        assert not np.allclose(maps_a, maps_b)  # explained for class 1 and for class 0


def test_the_audit_decides_with_the_runs_saved_threshold(app_workspace, tmp_path):
    """A threshold of 0 for the first class makes every image "the first class": its accuracy is 1, the others' 0."""
    import shutil

    from core import explorer, runs
    from core.audit import audit_run

    source = runs.latest_complete_run(app_workspace)
    shutil.copytree(source.path, tmp_path / source.id)
    run = runs.read_run(tmp_path / source.id)
    first, *others = run.class_names
    explorer.save_threshold(run, first, 0.0)
    report = audit_run(run, "gradcam", agreement_images=0, save=False)
    assert report["classes"][first]["accuracy_before"] == 1.0
    assert all(report["classes"][name]["accuracy_before"] == 0.0 for name in others)


def test_flag_text_names_the_region_and_the_share_the_chart_shows():
    """A class whose border band holds more mass than any corner but is no outlier there: the text names the
    corner where it exceeds the other classes most, by the chart's label, with the share that bar shows."""
    from core.audit import flag_classes, flag_text, uniform_shares
    from ui.audit import REGION_LABELS

    uniform = uniform_shares(32, 32)
    plain = {r: uniform[r] for r in uniform}
    circle = {**plain, "border": 0.20, "top_right": 0.03}
    other = {**plain, "border": 0.30, "top_right": 0.01}
    entry = flag_classes({"circle": circle, "square": other, "triangle": dict(other)}, uniform)["circle"]
    assert not entry["flagged"] and entry["candidate_region"] == "top_right"
    text = flag_text("circle", entry)
    label = REGION_LABELS["top_right"]
    assert label == "top-right corner" and f"“{label}” bars" in text
    assert "3% of its map mass lies in the top-right corner (other classes 1%, a uniform map 6%" in text
    assert "exceed the other classes' share the most" in text and "most concentrated" not in text
    assert "20%" not in text  # the border band's share is another bar
    entry = {**entry, "candidate_region": "border", "share": 0.45, "others_share": 0.1, "flagged": True}
    assert "FLAGGED, its maps concentrate on the border band: 45% of its map mass lies in the border band" in (
        flag_text("circle", entry)
    )
