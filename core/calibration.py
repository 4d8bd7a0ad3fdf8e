"""Are the probabilities honest? Reliability, expected calibration error, Brier score, temperature scaling.

Everything here takes arrays: ``probs`` (N, C) class probabilities and ``y_true`` (N,) integer labels.
No TensorFlow. Temperature scaling works on probabilities (their logarithms are logits up to a constant
per row, which softmax ignores), so it applies to any run, imported SavedModels included.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
_EPS = 1e-12


class CalibrationError(ValueError):
    """Inputs that calibration cannot use; the message says what was expected and received."""


def _check(probs, y_true) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise CalibrationError(f"Expected probabilities of shape (N, C) with C >= 2. Received shape {probs.shape}")
    if y_true.shape != (len(probs),):
        raise CalibrationError(f"Expected {len(probs)} labels, one per row. Received shape {y_true.shape}")
    if len(probs) == 0:
        raise CalibrationError("Expected at least one prediction. Received none")
    if not np.isfinite(probs).all() or probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise CalibrationError("Expected probabilities in [0, 1]. Received values outside it or NaN")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise CalibrationError(f"Expected integer labels in [0, {probs.shape[1] - 1}]. Received {y_true[:5]}...")
    return np.clip(probs, 0.0, 1.0), y_true.astype(int)


def bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence: bins are (i/n, (i+1)/n], the first one closed at 0."""
    confidence = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability(probs, y_true, n_bins: int = ECE_BINS) -> dict:
    """Top-label reliability diagram and expected calibration error.

    Returns:
        ``{"ece", "n_bins", "bins": [{"low", "high", "count", "accuracy", "confidence"}]}``; empty bins have
        count 0 and accuracy/confidence None. ECE = sum over bins of (count / N) * |accuracy - confidence|.
    """
    probs, y_true = _check(probs, y_true)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise CalibrationError(f"Expected n_bins an int >= 1. Received: n_bins={n_bins!r}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    index = bin_index(confidence, n_bins)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        entry = {"low": b / n_bins, "high": (b + 1) / n_bins, "count": count, "accuracy": None, "confidence": None}
        if count:
            accuracy, mean_confidence = float(correct[members].mean()), float(confidence[members].mean())
            entry.update(accuracy=accuracy, confidence=mean_confidence)
            ece += count / len(probs) * abs(accuracy - mean_confidence)
        bins.append(entry)
    return {"ece": float(ece), "n_bins": n_bins, "bins": bins}


def expected_calibration_error(probs, y_true, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-label confidence over ``n_bins`` equal-width bins (see `reliability`)."""
    return reliability(probs, y_true, n_bins)["ece"]


def brier_score(probs, y_true) -> float:
    """Multi-class Brier score: mean over images of the squared distance between the probability vector and
    the one-hot label (0 is perfect, 2 the worst)."""
    probs, y_true = _check(probs, y_true)
    onehot = np.eye(probs.shape[1])[y_true]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def per_class_reliability(probs, y_true, class_names, n_bins: int = 10) -> dict[str, dict]:
    """One-vs-rest reliability curve per class (scikit-learn's ``calibration_curve``, uniform bins).

    Returns ``{class: {"mean_predicted": [...], "fraction_positive": [...]}}``; a class absent from the
    labels or never predicted above 0 still gets its (possibly short) curve.
    """
    from sklearn.calibration import calibration_curve

    probs, y_true = _check(probs, y_true)
    curves = {}
    for i, name in enumerate(class_names):
        y_binary = (y_true == i).astype(int)
        fraction, mean_predicted = calibration_curve(y_binary, probs[:, i], n_bins=n_bins, strategy="uniform")
        curves[str(name)] = {"mean_predicted": mean_predicted.tolist(), "fraction_positive": fraction.tolist()}
    return curves


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Softmax(log(probs) / T): T > 1 softens over-confident probabilities, T < 1 sharpens them."""
    probs = np.asarray(probs, dtype=np.float64)
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"Expected a temperature > 0. Received: temperature={temperature!r}")
    logits = np.log(np.clip(probs, _EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def log_loss(probs, y_true) -> float:
    """Mean negative log-likelihood of the true class."""
    probs, y_true = _check(probs, y_true)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], _EPS, 1.0))))


def fit_temperature(probs, y_true) -> dict:
    """The temperature minimising the log-loss of ``probs`` (a validation split), one scalar.

    Returns:
        ``{"temperature", "log_loss_before", "log_loss_after", "ece_before", "ece_after", "n_images"}``.
        With perfect, fully confident predictions there is nothing to fit: the temperature stays 1.
    """
    probs, y_true = _check(probs, y_true)
    before = log_loss(probs, y_true)
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    result = minimize_scalar(
        lambda log_t: log_loss(apply_temperature(probs, float(np.exp(log_t))), y_true),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(result.x))
    after = log_loss(apply_temperature(probs, temperature), y_true)
    if not after < before:  # the optimiser found nothing better than leaving the model as it is
        temperature, after = 1.0, before
    return {
        "temperature": temperature,
        "log_loss_before": before,
        "log_loss_after": after,
        "ece_before": expected_calibration_error(probs, y_true),
        "ece_after": expected_calibration_error(apply_temperature(probs, temperature), y_true),
        "n_images": int(len(y_true)),
    }
