"""Where the model goes wrong: top-k accuracy, metrics per group (patient, hospital, camera), ranked mistakes.

Works on a run's predictions table (see `core.evaluation.predictions_frame`: ``path``, ``true_label``,
``true_class``, ``pred_label``, ``pred_class``, ``confidence``, ``correct``, ``prob_<class>``). No TensorFlow.
"""

from __future__ import annotations

from pathlib import PurePath

import numpy as np
import pandas as pd

PROB_PREFIX = "prob_"


def _probabilities(predictions: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    names = [c[len(PROB_PREFIX) :] for c in predictions.columns if c.startswith(PROB_PREFIX)]
    return names, predictions[[PROB_PREFIX + n for n in names]].to_numpy(dtype=np.float64)


def top_k_accuracy(predictions: pd.DataFrame, max_k: int = 5) -> dict[int, float]:
    """Share of images whose true class is among the k most probable, for k = 1 .. min(max_k, C - 1).

    Empty for two classes (top-2 of 2 is always right, so only top-1 means anything)."""
    names, probs = _probabilities(predictions)
    if len(names) <= 2 or not len(predictions):
        return {}
    y_true = predictions["true_label"].to_numpy(dtype=int)
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = np.argmax(order == y_true[:, None], axis=1)  # 0 = the most probable class
    return {k: float(np.mean(rank < k)) for k in range(1, min(max_k, len(names) - 1) + 1)}


def group_of(path: str, class_name: str) -> str | None:
    """The first sub-folder under the image's class folder (one patient, say), or None for a file that lies
    directly in its class folder."""
    parts = PurePath(path).parts[:-1]
    positions = [i for i, part in enumerate(parts) if part == class_name]
    if not positions or positions[-1] == len(parts) - 1:
        return None
    return parts[positions[-1] + 1]


def metrics_per_group(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and mean true-class probability per (class, group) sub-folder, worst accuracy first.

    Empty when no image lies in a sub-folder of its class folder."""
    groups = [group_of(p, c) for p, c in zip(predictions["path"], predictions["true_class"])]
    if not any(g is not None for g in groups):
        return pd.DataFrame(columns=["class", "group", "images", "accuracy", "mean true-class probability"])
    names, probs = _probabilities(predictions)
    true_probability = probs[np.arange(len(predictions)), predictions["true_label"].to_numpy(dtype=int)]
    frame = pd.DataFrame(
        {
            "class": predictions["true_class"].to_numpy(),
            "group": [g if g is not None else "(no sub-folder)" for g in groups],
            "correct": predictions["correct"].to_numpy(dtype=bool),
            "p_true": true_probability,
        }
    )
    table = (
        frame.groupby(["class", "group"], sort=False)
        .agg(images=("correct", "size"), accuracy=("correct", "mean"), p=("p_true", "mean"))
        .reset_index()
        .rename(columns={"p": "mean true-class probability"})
    )
    return table.sort_values(["accuracy", "images"], ascending=[True, False], kind="stable").reset_index(drop=True)


def ranked_mistakes(predictions: pd.DataFrame, limit: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The most confidently wrong images (predicted class probability, highest first) and the least
    confident correct ones (lowest first), at most ``limit`` each, with true and predicted class and the
    probability of each."""
    names, probs = _probabilities(predictions)
    table = predictions[["path", "true_class", "pred_class", "confidence", "correct"]].copy()
    y_true = predictions["true_label"].to_numpy(dtype=int)
    table["p_true"] = probs[np.arange(len(table)), y_true] if len(table) else []
    wrong = table[~table["correct"]].sort_values(["confidence", "path"], ascending=[False, True], kind="stable")
    unsure = table[table["correct"]].sort_values(["confidence", "path"], ascending=[True, True], kind="stable")
    columns = ["path", "true_class", "pred_class", "confidence", "p_true"]
    return wrong[columns].head(limit).reset_index(drop=True), unsure[columns].head(limit).reset_index(drop=True)
