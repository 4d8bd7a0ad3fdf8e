"""The benchmark runs end to end on a tiny setting (no timing assertions)."""

from __future__ import annotations

import json

from core import bench
from core.explain import METHODS


def test_bench_measures_every_method_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(
        ["--archs", "compact_cnn", "--image-size", "32", "--repeats", "2", "--patch-size", "8", "--json", str(out)]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(row["arch"], row["method"]) for row in rows] == [("compact_cnn", method) for method in METHODS]
    for row in rows:
        assert row["image_size"] == 32
        assert row["ours_ms"] > 0 and row["floor_ms"] > 0
        assert row["ours_over_floor"] == row["ours_ms"] / row["floor_ms"]
        # tf-explain either ran (possibly on the flat twin) or its failure is reported as text
        assert (row["tf_explain_ms"] or 0) > 0 or row["tf_explain_error"]
    by_method = {row["method"]: row for row in rows}
    assert by_method["gradcam"]["layer_name"] == "top_conv"
    assert by_method["occlusion"]["patch_size"] == 8
    assert by_method["vanilla_gradients"]["tf_explain_ms"] > 0  # the model has the separate softmax it needs

    table = bench.format_table(rows)
    printed = capsys.readouterr().out
    for method in METHODS:
        assert method in table and method in printed
    assert "ours/floor" in table.splitlines()[0]
