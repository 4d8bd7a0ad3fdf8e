"""The benchmark runs end to end on a tiny setting (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from core import bench
from core.explain import METHODS


def test_bench_measures_every_method_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--archs", "compact_cnn", "--image-size", "32", "--batch-sizes", "1", "2", "--repeats", "1", "--fast"]
    argv += ["--param", "occlusion.patch_size=8", "--param", "lime.samples=40", "--param", "rise.masks=32"]
    argv += ["--json", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    expected = [("compact_cnn", batch, method) for batch in (1, 2) for method in METHODS]
    assert [(row["arch"], row["batch_size"], row["method"]) for row in rows] == expected
    for row in rows:
        assert row["image_size"] == 32
        assert row["ours_ms"] > 0 and row["floor_ms"] > 0
        assert row["ours_over_floor"] == row["ours_ms"] / row["floor_ms"]
        # tf-explain ran (possibly on the flat twin), has no such method, or its failure is reported as text
        if row["tf_explain_ms"]:
            assert row["tf_explain_over_ours"] == row["tf_explain_ms"] / row["ours_ms"]
    by_method = {row["method"]: row for row in rows if row["batch_size"] == 1}
    assert "layer_name=compact_cnn/top_conv" in by_method["gradcam"]["options"]
    assert "patch_size=8" in by_method["occlusion"]["options"]
    assert "samples=40" in by_method["lime"]["options"] and "masks=32" in by_method["rise"]["options"]
    for method in ("vanilla_gradients", "smoothgrad", "integrated_gradients", "gradient_x_input"):
        assert by_method[method]["tf_explain_ms"] > 0, by_method[method]["tf_explain_error"]
    for method in ("lime", "rise", "score_cam", "gradcam_plus_plus"):  # tf-explain has no such method
        assert by_method[method]["tf_explain_ms"] is None and by_method[method]["tf_explain_error"] is None

    table = bench.format_table(rows)
    printed = capsys.readouterr().out
    for method in METHODS:
        assert method in table and method in printed
    assert "ours/floor" in table.splitlines()[0]


def test_tf_explain_is_skipped_when_its_single_pass_would_be_too_large():
    rows = bench.run_bench(
        archs=["compact_cnn"],
        image_size=32,
        repeats=1,
        methods=["smoothgrad"],
        batch_sizes=[2],
        params={"smoothgrad": {"samples": 5}},
        tf_explain_max_images=8,
    )
    assert rows[0]["tf_explain_ms"] is None and "one pass of 10 images" in rows[0]["tf_explain_error"]


def test_bad_params_are_refused_with_the_expected_form():
    with pytest.raises(SystemExit):
        bench.main(["--param", "nope.samples=3"])
    assert bench.parse_params(["rise.cell_size=None", "smoothgrad.base_method=gradient_x_input"], METHODS) == {
        "rise": {"cell_size": None},
        "smoothgrad": {"base_method": "gradient_x_input"},
    }


def test_every_method_has_a_floor_that_runs_on_a_nested_model(monkeypatch):
    import numpy as np
    import tensorflow as tf

    import core.explain.cam as cam
    from core.explain import get_explainer
    from core.models import build_model

    model = build_model("compact_cnn", num_classes=3, image_size=32)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    for method in METHODS:
        explainer = get_explainer(method)
        options = explainer.check_params(model, 32, 32, **explainer.fast_params)
        value = tf.function(explainer.floor(model, options, 32, 32))(images, tf.constant([0, 2], tf.int32))
        assert np.isfinite(float(value)), method
    # Grad-CAM's floor stops at the backbone (the forward pass, then the head's gradient), not at the input
    options = get_explainer("gradcam").check_params(model, 32, 32)
    fallback = []
    monkeypatch.setattr(cam, "bare_floor", lambda *args: fallback.append(args))
    get_explainer("gradcam").floor(model, options, 32, 32)
    assert not fallback
    get_explainer("gradcam").floor(model, {**options, "layer_name": ("compact_cnn", "block1_conv")}, 32, 32)
    assert len(fallback) == 1  # a layer deep inside the backbone: the input gradient stands in
