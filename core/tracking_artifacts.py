"""The evaluation files an MLflow run gets (see `core.tracking`): the confusion matrix and the ROC curves,
each as a PNG that MLflow's UI shows inline and as data (CSV / JSON) to read back.

Pure functions of a run's ``predictions.csv``; matplotlib draws without pyplot (no global figure state,
no display needed). This module does not import TensorFlow or MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core import evaluation

CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
ROC_PNG = "roc_curves.png"
ROC_JSON = "roc_curves.json"
MAX_ANNOTATED_CLASSES = 25  # above this, the confusion matrix cells carry no numbers (unreadable)


def confusion_figure(matrix: pd.DataFrame):
    """Counts per (true, predicted) class as a heatmap, each cell numbered (up to 25 classes)."""
    from matplotlib.figure import Figure

    n = len(matrix)
    side = min(4.0 + 0.45 * n, 18.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    ax.set_xticks(
        range(n), [str(c) for c in matrix.columns], rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center"
    )
    ax.set_yticks(range(n), [str(c) for c in matrix.index])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test split)")
    if n <= MAX_ANNOTATED_CLASSES:
        high = values.max() if values.size else 0.0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:g}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if high and values[i, j] > high / 2 else "black",
                )
    return fig


def roc_figure(curves: dict[str, dict]):
    """One-vs-rest ROC curves, one line per class with its AUC, and the chance diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.6, label=f"{name} (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves, one-vs-rest (test split)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def write_evaluation_files(predictions: pd.DataFrame, folder: str | Path) -> list[str]:
    """Writes the confusion matrix and ROC curves of ``predictions`` into ``folder``; returns the names.

    Files: confusion_matrix.png and .csv (rows: true class, columns: predicted), roc_curves.png and
    roc_curves.json (``{class: {"fpr": [...], "tpr": [...], "auc": float}}``; a class absent from the test
    split has no curve).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    matrix = evaluation.confusion_matrix(predictions)
    matrix.astype(int).to_csv(folder / CONFUSION_CSV)
    confusion_figure(matrix).savefig(folder / CONFUSION_PNG)
    curves = evaluation.roc_curves(predictions)
    data = {
        name: {"fpr": np.asarray(c["fpr"]).tolist(), "tpr": np.asarray(c["tpr"]).tolist(), "auc": c["auc"]}
        for name, c in curves.items()
    }
    (folder / ROC_JSON).write_text(json.dumps(data, indent=1) + "\n", "utf-8")
    roc_figure(curves).savefig(folder / ROC_PNG)
    return [CONFUSION_PNG, CONFUSION_CSV, ROC_PNG, ROC_JSON]
