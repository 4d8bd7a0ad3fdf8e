"""The evaluation explorer: what the Evaluation page shows beyond the classic report, from a run's files.

* `extended_metrics`: ECE, Brier score, bootstrap intervals and top-k accuracy of a predictions table; they
  are merged into ``metrics.json`` when a run is evaluated.
* Temperature scaling fitted on the validation split (``val_predictions.csv``), saved as ``calibration.json``;
  a decision threshold on one class, saved as ``threshold.json``. Both are only applied when the user
  chose them; the model itself never changes.
No TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core import bootstrap, calibration, error_analysis, runs, thresholds

VAL_PREDICTIONS_FILE = "val_predictions.csv"
CALIBRATION_FILE = "calibration.json"
THRESHOLD_FILE = "threshold.json"
PROB_PREFIX = "prob_"


class ExplorerError(ValueError):
    """What the explorer was asked cannot be done with this run; the message says why."""


def arrays(predictions: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class names, true labels (N,), probabilities (N, C)) of a predictions table."""
    names = [c[len(PROB_PREFIX) :] for c in predictions.columns if c.startswith(PROB_PREFIX)]
    probs = predictions[[PROB_PREFIX + n for n in names]].to_numpy(dtype=np.float64)
    return names, predictions["true_label"].to_numpy(dtype=int), probs


def extended_metrics(predictions: pd.DataFrame, resamples: int = bootstrap.RESAMPLES, seed: int = 0) -> dict:
    """``ece`` (15 bins, top label), ``brier``, ``confidence_intervals`` ({metric: [low, high]} for accuracy,
    macro_f1 and roc_auc_macro), ``recall_intervals`` ({class: [low, high]}), ``bootstrap`` (its settings)
    and ``top_k_accuracy`` ({k: accuracy}, more than two classes only)."""
    names, y_true, probs = arrays(predictions)
    if not len(y_true):
        return {}
    ci = bootstrap.confidence_intervals(y_true, probs, names, resamples=resamples, seed=seed)
    return {
        "ece": calibration.expected_calibration_error(probs, y_true),
        "brier": calibration.brier_score(probs, y_true),
        "confidence_intervals": {k: ci[k] for k in ("accuracy", "macro_f1", "roc_auc_macro")},
        "recall_intervals": ci["recall"],
        "bootstrap": {k: ci[k] for k in ("resamples", "seed", "confidence")},
        "top_k_accuracy": {str(k): v for k, v in error_analysis.top_k_accuracy(predictions).items()},
    }


def paired_comparison(
    predictions_a: pd.DataFrame, predictions_b: pd.DataFrame, resamples: int = bootstrap.RESAMPLES, seed: int = 0
) -> dict:
    """Paired bootstrap of run B - run A on the test images both were evaluated on (matched by path).

    Raises:
        ExplorerError: the runs share no test image, or name their classes differently.
    """
    names_a, _, _ = arrays(predictions_a)
    names_b, _, _ = arrays(predictions_b)
    if names_a != names_b:
        raise ExplorerError(f"The runs predict different classes ({names_a} vs {names_b}): compare like with like.")
    shared = predictions_a.merge(predictions_b, on="path", suffixes=("_a", "_b"))
    if shared.empty:
        raise ExplorerError("The runs share no test image: they were evaluated on different test splits.")
    if (shared["true_label_a"] != shared["true_label_b"]).any():
        raise ExplorerError("The runs disagree on the true class of some test images: not the same dataset.")
    probs_a = shared[[f"{PROB_PREFIX}{n}_a" for n in names_a]].to_numpy(dtype=np.float64)
    probs_b = shared[[f"{PROB_PREFIX}{n}_b" for n in names_a]].to_numpy(dtype=np.float64)
    y_true = shared["true_label_a"].to_numpy(dtype=int)
    result = bootstrap.paired_difference(y_true, probs_a, probs_b, resamples=resamples, seed=seed)
    result["shared_images"] = int(len(shared))
    result["only_a"] = int(len(predictions_a) - len(shared))
    result["only_b"] = int(len(predictions_b) - len(shared))
    return result


# ---- temperature scaling ----------------------------------------------------------------------------


def load_val_predictions(run: runs.Run) -> pd.DataFrame:
    """The validation split's predictions, written when the run was evaluated."""
    path = run.file(VAL_PREDICTIONS_FILE)
    if not path.exists():
        raise ExplorerError(
            f"Run {run.id} has no validation predictions (it has no validation split, or was evaluated before "
            "they were recorded: evaluate it again with `python -m core evaluate`)."
        )
    text = {"path": str, "true_class": str, "pred_class": str}
    return pd.read_csv(path, dtype=text, keep_default_na=False)


def fit_run_temperature(run: runs.Run) -> dict:
    """Fits the temperature on the run's validation predictions (not saved; see `save_calibration`)."""
    names, y_true, probs = arrays(load_val_predictions(run))
    if len(y_true) < 2:
        raise ExplorerError(f"Run {run.id}'s validation split has {len(y_true)} image(s): too few to fit on.")
    return {**calibration.fit_temperature(probs, y_true), "fitted_on": "validation split"}


def save_calibration(run: runs.Run, fit: dict) -> None:
    runs.atomic_write_json(run.file(CALIBRATION_FILE), fit)


def load_calibration(run: runs.Run) -> dict | None:
    """The saved temperature fit, or None when the user has not saved one."""
    return _read_json(run, CALIBRATION_FILE)


def clear_calibration(run: runs.Run) -> None:
    run.file(CALIBRATION_FILE).unlink(missing_ok=True)


def calibrated(predictions: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """The predictions table with every probability scaled by ``temperature`` (labels and paths kept)."""
    names, y_true, probs = arrays(predictions)
    scaled = calibration.apply_temperature(probs, temperature)
    from core.evaluation import predictions_frame

    return predictions_frame(predictions["path"], y_true, scaled, names)


# ---- thresholds ----------------------------------------------------------------------------------------


def threshold_view(predictions: pd.DataFrame, positive_class: str, threshold: float) -> dict:
    """The operating point of ``positive_class`` (vs the rest) at ``threshold``, and the preset points."""
    names, y_true, probs = arrays(predictions)
    if positive_class not in names:
        raise ExplorerError(f"Unknown class. Expected one of {names}. Received: {positive_class!r}")
    index = names.index(positive_class)
    scores, positive = probs[:, index], y_true == index
    point = thresholds.operating_point(scores, positive, threshold)
    try:
        presets = thresholds.presets(scores, positive)
    except thresholds.ThresholdError:
        presets = {}
    return {"class": positive_class, "point": point, "presets": presets}


def class_curves(predictions: pd.DataFrame, positive_class: str) -> tuple[dict | None, dict | None]:
    """ROC ({"fpr", "tpr", "auc"}) and precision-recall ({"precision", "recall", "average_precision"}) of
    one class against the rest; None where undefined (the class absent, or every image of it)."""
    from sklearn import metrics as skm

    names, y_true, probs = arrays(predictions)
    if positive_class not in names:
        raise ExplorerError(f"Unknown class. Expected one of {names}. Received: {positive_class!r}")
    index = names.index(positive_class)
    positive, scores = (y_true == index).astype(int), probs[:, index]
    roc = pr = None
    if 0 < positive.sum() < len(positive):
        fpr, tpr, _ = skm.roc_curve(positive, scores)
        roc = {"fpr": fpr, "tpr": tpr, "auc": float(skm.auc(fpr, tpr))}
    if positive.sum() > 0:
        precision, recall, _ = skm.precision_recall_curve(positive, scores)
        pr = {
            "precision": precision,
            "recall": recall,
            "average_precision": float(skm.average_precision_score(positive, scores)),
        }
    return roc, pr


def save_threshold(run: runs.Run, positive_class: str, threshold: float) -> None:
    if positive_class not in run.class_names:
        raise ExplorerError(f"Unknown class. Expected one of {run.class_names}. Received: {positive_class!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ExplorerError(f"Expected a threshold between 0 and 1. Received: {threshold!r}")
    runs.atomic_write_json(run.file(THRESHOLD_FILE), {"class": positive_class, "threshold": float(threshold)})


def load_threshold(run: runs.Run) -> dict | None:
    """``{"class", "threshold"}`` saved with the run, or None (argmax decides)."""
    saved = _read_json(run, THRESHOLD_FILE)
    if not saved or saved.get("class") not in run.class_names or not isinstance(saved.get("threshold"), float):
        return None
    return saved


def clear_threshold(run: runs.Run) -> None:
    run.file(THRESHOLD_FILE).unlink(missing_ok=True)


def predicted_index(run: runs.Run, probs) -> np.ndarray:
    """Predicted classes (N,) for probabilities (N, C) under the run's saved threshold, if any (else argmax).
    Every page that names "the predicted class" uses this."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    saved = load_threshold(run)
    if saved is None:
        return probs.argmax(axis=1)
    return thresholds.decide(probs, run.class_names.index(saved["class"]), saved["threshold"])


def decided_predictions(run: runs.Run, predictions: pd.DataFrame) -> pd.DataFrame:
    """The predictions table as the run decides: with a saved threshold, ``pred_label``, ``pred_class``,
    ``correct`` and ``confidence`` (the probability of the predicted class) follow `predicted_index`; the
    class probabilities never change. Without one, the table as it is (argmax)."""
    if load_threshold(run) is None or predictions.empty:
        return predictions
    names, y_true, probs = arrays(predictions)
    y_pred = predicted_index(run, probs)
    decided = predictions.copy()
    decided["pred_label"] = y_pred
    decided["pred_class"] = [names[i] for i in y_pred]
    decided["confidence"] = probs[np.arange(len(y_pred)), y_pred]
    decided["correct"] = y_true == y_pred
    return decided


def decided_metrics(run: runs.Run, decided: pd.DataFrame, saved: dict) -> dict:
    """``metrics.json`` (``saved``) with the decision-dependent metrics (accuracy, per-class precision, recall
    and F1, the confusion matrix) recomputed from ``decided`` (`decided_predictions`) under the run's saved
    threshold, plus ``decision_threshold`` ({"class", "threshold"}) and ``argmax_accuracy`` (what the most
    probable class gives). Without a saved threshold, ``saved`` as it is. ROC AUC, calibration and the
    bootstrap intervals do not depend on it."""
    from core import evaluation

    threshold = load_threshold(run)
    if threshold is None or decided.empty:
        return saved
    recomputed = evaluation.compute_metrics(decided)
    merged = {**saved, **{k: v for k, v in recomputed.items() if k != "roc_auc_macro"}}
    merged["per_class"] = {
        name: {**(saved.get("per_class") or {}).get(name, {}), **entry}
        for name, entry in recomputed["per_class"].items()
    }
    merged["decision_threshold"] = {"class": threshold["class"], "threshold": threshold["threshold"]}
    merged["argmax_accuracy"] = saved.get("accuracy")
    return merged


def _read_json(run: runs.Run, name: str) -> dict | None:
    import json

    try:
        value = json.loads(run.file(name).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
