"""Several explanation methods on one image, side by side, timed: what the Explainer page and
``python -m core explain`` both show."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class MethodResult:
    method: str
    saliency: np.ndarray | None  # float32 (H, W) in [0, 1]; None when the method failed
    seconds: float
    error: str | None = None


def explain_side_by_side(
    model, image, methods, class_index=None, params: dict | None = None
) -> tuple[np.ndarray, list[MethodResult]]:
    """Predicts ``image`` (H, W, 3 pixels 0-255, at the model's input size) and explains it with each method.

    Returns the class probabilities and one `MethodResult` per method. A method that cannot apply
    (an `ExplanationError`) gives a result with ``error`` set instead of stopping the others.
    """
    from core.explain import ExplanationError, explain
    from core.models import predict_proba

    batch = np.asarray(image, dtype=np.float32)[None]
    probs = predict_proba(model, batch)[0]
    target = int(np.argmax(probs)) if class_index is None else int(class_index)
    results = []
    for method in methods:
        kwargs = dict((params or {}).get(method, {}))
        started = time.perf_counter()
        try:
            saliency = explain(model, batch, method, class_index=target, **kwargs)[0]
            results.append(MethodResult(method, saliency, time.perf_counter() - started))
        except ExplanationError as exc:
            results.append(MethodResult(method, None, time.perf_counter() - started, str(exc)))
    return probs, results
