"""How sure are these numbers? Percentile bootstrap intervals over the test images, and paired differences.

The test images are resampled with replacement (``resamples`` times, a fixed ``seed``); each statistic is
recomputed on every resample and the interval is the (2.5%, 97.5%) percentile of those values. A resample on
which a statistic is undefined (ROC AUC of a class absent from it) is left out of that statistic.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0


class BootstrapError(ValueError):
    """Inputs the bootstrap cannot use; the message says what was expected and received."""


def _auc(y_binary: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; NaN when one side is empty."""
    from scipy.stats import rankdata

    n_pos = int(y_binary.sum())
    n_neg = len(y_binary) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y_binary == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def point_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, macro_f1, roc_auc_macro and recall_<i> per class index on one sample."""
    n_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    present = support > 0
    out = {
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(f1[present | (predicted > 0)].mean()) if (present | (predicted > 0)).any() else 0.0,
    }
    if n_classes == 2:
        auc = _auc((y_true == 1).astype(int), probs[:, 1])
    else:
        aucs = [_auc((y_true == i).astype(int), probs[:, i]) for i in range(n_classes)]
        aucs = [a for a in aucs if np.isfinite(a)]
        auc = float(np.mean(aucs)) if aucs else float("nan")
    out["roc_auc_macro"] = auc
    for i in range(n_classes):
        out[f"recall_{i}"] = float(recall[i])
    return out


def _check(y_true, probs, resamples, confidence) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[1] < 2 or y_true.shape != (len(probs),) or len(probs) == 0:
        raise BootstrapError(
            f"Expected N >= 1 labels and probabilities (N, C >= 2). Received {y_true.shape} and {probs.shape}"
        )
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise BootstrapError(f"Expected integer labels in [0, {probs.shape[1] - 1}]")
    if not isinstance(resamples, int) or resamples < 10:
        raise BootstrapError(f"Expected resamples an int >= 10. Received: resamples={resamples!r}")
    if not 0 < confidence < 1:
        raise BootstrapError(f"Expected confidence in (0, 1). Received: confidence={confidence!r}")
    return y_true.astype(int), probs


def _interval(values: list[float], confidence: float) -> list[float] | None:
    finite = np.asarray([v for v in values if np.isfinite(v)])
    if not len(finite):
        return None
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def confidence_intervals(
    y_true, probs, class_names=None, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> dict:
    """Percentile bootstrap intervals for accuracy, macro F1, macro ROC AUC and each class's recall.

    Returns:
        ``{"accuracy": [low, high], "macro_f1": [...], "roc_auc_macro": [...] or None,
        "recall": {class: [low, high] or None}, "resamples", "seed", "confidence", "n_images"}``.
    """
    y_true, probs = _check(y_true, probs, resamples, confidence)
    names = list(class_names) if class_names is not None else [str(i) for i in range(probs.shape[1])]
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        chosen = rng.integers(0, n, n)
        for key, value in point_metrics(y_true[chosen], probs[chosen]).items():
            draws.setdefault(key, []).append(value)
    return {
        "accuracy": _interval(draws["accuracy"], confidence),
        "macro_f1": _interval(draws["macro_f1"], confidence),
        "roc_auc_macro": _interval(draws["roc_auc_macro"], confidence),
        "recall": {name: _interval(draws[f"recall_{i}"], confidence) for i, name in enumerate(names)},
        "resamples": resamples,
        "seed": seed,
        "confidence": confidence,
        "n_images": n,
    }


def paired_difference(
    y_true, probs_a, probs_b, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> dict:
    """Bootstrap of B - A on the same test images (the same resample for both runs each time).

    Returns ``{metric: {"difference", "interval", "b_better", "a_better"}}`` for ``accuracy`` and
    ``roc_auc_macro``: ``b_better`` only when the whole interval lies above 0.
    """
    y_true, probs_a = _check(y_true, probs_a, resamples, confidence)
    _, probs_b = _check(y_true, probs_b, resamples, confidence)
    if probs_a.shape != probs_b.shape:
        raise BootstrapError(
            f"Expected both runs' probabilities of one shape. Received {probs_a.shape} and {probs_b.shape}"
        )
    rng = np.random.default_rng(seed)
    n = len(y_true)
    point_a, point_b = point_metrics(y_true, probs_a), point_metrics(y_true, probs_b)
    diffs: dict[str, list[float]] = {"accuracy": [], "roc_auc_macro": []}
    for _ in range(resamples):
        chosen = rng.integers(0, n, n)
        a, b = point_metrics(y_true[chosen], probs_a[chosen]), point_metrics(y_true[chosen], probs_b[chosen])
        for key in diffs:
            diffs[key].append(b[key] - a[key])
    out = {}
    for key, values in diffs.items():
        interval = _interval(values, confidence)
        out[key] = {
            "difference": float(point_b[key] - point_a[key]),
            "interval": interval,
            "b_better": bool(interval is not None and interval[0] > 0),
            "a_better": bool(interval is not None and interval[1] < 0),
        }
    out.update(resamples=resamples, seed=seed, confidence=confidence, n_images=n)
    return out
