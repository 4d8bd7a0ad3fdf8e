"""Predictions -> metrics, confusion matrix, ROC and precision-recall curves (scikit-learn).

Works on the predictions table of a run (one row per test image: ``path``, ``true_label``,
``true_class``, ``pred_label``, ``pred_class``, ``correct``, ``prob_<class>`` for each class).
This module does not import TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

PROB_PREFIX = "prob_"


def predictions_frame(paths, y_true, probs: np.ndarray, class_names) -> pd.DataFrame:
    """Builds the predictions table from true labels and class probabilities (N, C)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=int)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(class_names)):
        raise ValueError(f"Expected probabilities of shape ({len(y_true)}, {len(class_names)}). Received {probs.shape}")
    y_pred = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "true_label": y_true,
            "true_class": [class_names[i] for i in y_true],
            "pred_label": y_pred,
            "pred_class": [class_names[i] for i in y_pred],
            "confidence": probs.max(axis=1),
        }
    )
    frame["correct"] = frame["true_label"] == frame["pred_label"]
    for i, name in enumerate(class_names):
        frame[f"{PROB_PREFIX}{name}"] = probs[:, i]
    return frame


def class_names_of(predictions: pd.DataFrame) -> list[str]:
    return [c[len(PROB_PREFIX) :] for c in predictions.columns if c.startswith(PROB_PREFIX)]


def _arrays(predictions: pd.DataFrame):
    names = class_names_of(predictions)
    probs = predictions[[f"{PROB_PREFIX}{n}" for n in names]].to_numpy(dtype=np.float64)
    return names, predictions["true_label"].to_numpy(dtype=int), probs


def _safe_auc(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (AUC is undefined then)."""
    if y_binary.min() == y_binary.max():
        return None
    return float(skm.roc_auc_score(y_binary, scores))


def _decisions(predictions: pd.DataFrame, probs: np.ndarray) -> np.ndarray:
    """The table's predicted classes (a saved decision threshold may have made them, see
    `core.explorer.decided_predictions`); the most probable class where the table has none."""
    if "pred_label" in predictions:
        return predictions["pred_label"].to_numpy(dtype=int)
    return probs.argmax(axis=1)


def compute_metrics(predictions: pd.DataFrame) -> dict:
    """Accuracy, macro ROC AUC, and per class precision, recall, F1, support and ROC AUC.

    Returns:
        ``{"accuracy", "roc_auc_macro", "n_samples", "per_class": {class: {...}},
        "macro_avg": {...}, "weighted_avg": {...}, "confusion_matrix": [[...]], "class_names": [...]}``
    """
    names, y_true, probs = _arrays(predictions)
    labels = list(range(len(names)))
    y_pred = _decisions(predictions, probs)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {}
    aucs = []
    for i, name in enumerate(names):
        if len(names) == 2:
            auc = _safe_auc((y_true == 1).astype(int), probs[:, 1])
        else:
            auc = _safe_auc((y_true == i).astype(int), probs[:, i])
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": auc,
        }

    def average(kind: str) -> dict:
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=kind, zero_division=0)
        return {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(y_true))}

    return {
        "class_names": names,
        "n_samples": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "macro_avg": average("macro"),
        "weighted_avg": average("weighted"),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def classification_report_frame(metrics: dict) -> pd.DataFrame:
    """The classification report as a table: one row per class, then accuracy, macro and weighted avg."""
    rows = [
        {"": name, **{k: v for k, v in values.items() if k != "roc_auc"}}
        for name, values in metrics["per_class"].items()
    ]
    n = metrics["n_samples"]
    rows.append({"": "accuracy", "precision": None, "recall": None, "f1": metrics["accuracy"], "support": n})
    rows.append({"": "macro avg", **metrics["macro_avg"]})
    rows.append({"": "weighted avg", **metrics["weighted_avg"]})
    frame = pd.DataFrame(rows).set_index("")
    frame.index.name = None
    return frame[["precision", "recall", "f1", "support"]]


def confusion_matrix(predictions: pd.DataFrame, normalize: bool = False) -> pd.DataFrame:
    """Rows: true class; columns: predicted class. ``normalize`` divides each row by its sum."""
    names, y_true, probs = _arrays(predictions)
    matrix = skm.confusion_matrix(y_true, _decisions(predictions, probs), labels=list(range(len(names)))).astype(float)
    if normalize:
        sums = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)
    return pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


def roc_curves(predictions: pd.DataFrame) -> dict[str, dict]:
    """One-vs-rest ROC curves per class (a single curve, for the positive class, with two classes).

    Returns ``{class: {"fpr": array, "tpr": array, "auc": float}}``; a class absent from the test set
    (AUC undefined) is left out.
    """
    names, y_true, probs = _arrays(predictions)
    targets = [1] if len(names) == 2 else range(len(names))
    curves = {}
    for i in targets:
        y_binary = (y_true == i).astype(int)
        if y_binary.min() == y_binary.max():
            continue
        fpr, tpr, _ = skm.roc_curve(y_binary, probs[:, i])
        curves[names[i]] = {"fpr": fpr, "tpr": tpr, "auc": float(skm.auc(fpr, tpr))}
    return curves


def pr_curves(predictions: pd.DataFrame) -> dict[str, dict]:
    """One-vs-rest precision-recall curves with average precision (same conventions as `roc_curves`)."""
    names, y_true, probs = _arrays(predictions)
    targets = [1] if len(names) == 2 else range(len(names))
    curves = {}
    for i in targets:
        y_binary = (y_true == i).astype(int)
        if y_binary.max() == 0:
            continue
        precision, recall, _ = skm.precision_recall_curve(y_binary, probs[:, i])
        curves[names[i]] = {
            "precision": precision,
            "recall": recall,
            "average_precision": float(skm.average_precision_score(y_binary, probs[:, i])),
        }
    return curves


def filter_predictions(predictions: pd.DataFrame, true_class: str | None = None, outcome: str = "all") -> pd.DataFrame:
    """Test images of one true class (None: all) and one outcome: ``"all"``, ``"correct"`` or ``"incorrect"``."""
    if outcome not in ("all", "correct", "incorrect"):
        raise ValueError(f"Expected outcome 'all', 'correct' or 'incorrect'. Received: outcome={outcome!r}")
    subset = predictions
    if true_class is not None:
        subset = subset[subset["true_class"] == true_class]
    if outcome != "all":
        subset = subset[subset["correct"] == (outcome == "correct")]
    return subset
