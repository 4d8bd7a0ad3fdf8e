"""Operating points: a decision threshold on one class's probability (two-class runs, or one class vs the rest).

``scores`` (N,) are the probabilities of the positive class and ``positive`` (N,) says which images truly
belong to it. An image is predicted positive when its score is at least the threshold.
"""

from __future__ import annotations

import numpy as np


class ThresholdError(ValueError):
    """A threshold or a target that cannot be used; the message says what was expected and received."""


def _check(scores, positive) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive).astype(bool)
    if scores.ndim != 1 or positive.shape != scores.shape or len(scores) == 0:
        raise ThresholdError(
            f"Expected scores and labels of the same length N >= 1. Received {scores.shape} and {positive.shape}"
        )
    if not np.isfinite(scores).all():
        raise ThresholdError("Expected finite scores. Received NaN or infinite values")
    return scores, positive


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def operating_point(scores, positive, threshold: float) -> dict:
    """Counts and rates at one threshold.

    Returns:
        ``{"threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "precision", "npv", "f1",
        "accuracy"}``; a rate whose denominator is 0 is None.
    """
    scores, positive = _check(scores, positive)
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 <= float(threshold) <= 1.0):
        raise ThresholdError(f"Expected a threshold between 0 and 1. Received: threshold={threshold!r}")
    predicted = scores >= float(threshold)
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    tn = int(np.sum(~predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "f1": f1,
        "accuracy": _ratio(tp + tn, len(scores)),
    }


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Every threshold that changes a decision, descending: 1.0 (or above the highest score) then each
    distinct score."""
    return np.unique(np.concatenate([scores, [1.0]]))[::-1]


def _rates(scores: np.ndarray, positive: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at each threshold (vectorised: one sort, no loop over images)."""
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    tn = np.searchsorted(neg, thresholds, side="left")
    sensitivity = tp / len(pos) if len(pos) else np.full(len(thresholds), np.nan)
    specificity = tn / len(neg) if len(neg) else np.full(len(thresholds), np.nan)
    return sensitivity, specificity


def youden_threshold(scores, positive) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (the highest one among ties)."""
    scores, positive = _check(scores, positive)
    if positive.all() or not positive.any():
        raise ThresholdError("Youden's J needs images of both the class and the rest. Received only one kind")
    thresholds = _candidates(scores)
    sensitivity, specificity = _rates(scores, positive, thresholds)
    return float(thresholds[int(np.argmax(sensitivity + specificity - 1.0))])


def threshold_for_sensitivity(scores, positive, target: float) -> float:
    """The highest threshold whose sensitivity reaches ``target`` (so specificity is as high as it can be)."""
    scores, positive = _check(scores, positive)
    _check_target(target, "sensitivity")
    if not positive.any():
        raise ThresholdError("No image of the class: sensitivity is undefined")
    thresholds = _candidates(scores)
    sensitivity, _ = _rates(scores, positive, thresholds)
    return float(thresholds[int(np.argmax(sensitivity >= target - 1e-12))])  # sensitivity grows as t falls


def threshold_for_specificity(scores, positive, target: float) -> float:
    """The lowest threshold whose specificity reaches ``target`` (so sensitivity is as high as it can be)."""
    scores, positive = _check(scores, positive)
    _check_target(target, "specificity")
    if positive.all():
        raise ThresholdError("No image outside the class: specificity is undefined")
    thresholds = _candidates(scores)
    _, specificity = _rates(scores, positive, thresholds)
    reaching = np.flatnonzero(specificity >= target - 1e-12)  # specificity falls as t falls
    return float(thresholds[reaching[-1]]) if len(reaching) else 1.0


def _check_target(target, name: str) -> None:
    if not (isinstance(target, (int, float)) and 0.0 < float(target) <= 1.0):
        raise ThresholdError(f"Expected a target {name} in (0, 1]. Received: {target!r}")


def presets(scores, positive, target_sensitivity: float = 0.95, target_specificity: float = 0.95) -> dict:
    """The preset operating points: Youden's J, a target sensitivity and a target specificity."""
    return {
        "youden": youden_threshold(scores, positive),
        f"sensitivity >= {target_sensitivity:g}": threshold_for_sensitivity(scores, positive, target_sensitivity),
        f"specificity >= {target_specificity:g}": threshold_for_specificity(scores, positive, target_specificity),
    }


def decide(probs, positive_index: int | None = None, threshold: float | None = None) -> np.ndarray:
    """Predicted classes (N,): the argmax, or with a saved threshold on class ``positive_index``: that class
    when its probability reaches the threshold, otherwise the most probable of the other classes."""
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    if threshold is None or positive_index is None:
        return predicted
    others = probs.copy()
    others[:, positive_index] = -np.inf
    return np.where(probs[:, positive_index] >= threshold, positive_index, others.argmax(axis=1))
