"""AppTest: a saved decision threshold decides the Evaluation page's accuracy, report and confusion matrix,
and the page says so."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pandas as pd
from apptest import open_page, plots


def test_a_saved_threshold_decides_the_evaluation_numbers(app_workspace, tmp_path, monkeypatch):
    workspace = tmp_path / "ws"
    shutil.copytree(app_workspace, workspace, ignore=shutil.ignore_patterns(".lock"))
    run_dir = next(p for p in (workspace / "runs").iterdir() if (p / "run.json").exists())
    frame = pd.read_csv(run_dir / "predictions.csv", dtype={"true_class": str, "pred_class": str})
    names = json.loads((run_dir / "run.json").read_text())["class_names"]
    first = names[0]
    (run_dir / "threshold.json").write_text(json.dumps({"class": first, "threshold": 0.0}))  # always the first class
    at = open_page("pages/3_Evaluation.py", workspace, monkeypatch)
    assert not at.exception
    expected = float((frame["true_class"] == first).mean())  # every image is predicted as the first class
    accuracy = [m for m in at.metric if m.label == "Test accuracy"][0]
    assert float(accuracy.value) == round(expected, 3)
    notes = [i.value for i in at.info if "saved decision threshold" in i.value]
    assert (
        notes
        and f"**{first}**" in notes[0]
        and f"{float(frame['correct'].mean()):.3f} with the most probable" in notes[0]
    )
    report = at.table[0].value
    recall = report["recall"].to_dict()  # rows by class name
    assert recall[first] == 1.0 and all(recall[n] == 0.0 for n in names[1:])  # the report follows the threshold
    heatmap = next(f for f in plots(at) if f["data"][0].get("type") == "heatmap")
    counts = heatmap["data"][0]["z"]
    if isinstance(counts, dict):  # plotly's binary encoding
        counts = np.frombuffer(base64.b64decode(counts["bdata"]), dtype=counts["dtype"])
    counts = np.asarray(counts, dtype=float).reshape(len(names), len(names))
    assert counts[:, 0].sum() == len(frame) and counts[:, 1:].sum() == 0  # one predicted column
