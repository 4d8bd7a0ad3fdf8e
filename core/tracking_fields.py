"""What a run of this dashboard becomes in MLflow: its parameters, final metrics and tags, as pure
functions of run.json and metrics.json (see `core.tracking`). No MLflow import here.

    params    every hyper-parameter (TrainingConfig's fields; None too: "not used"), architecture, source,
              dataset, class names (a JSON list), number of classes, split counts, input size,
              preprocessing, class weights used
    metrics   metrics.json's scalars as ``test/<path>`` (``test/accuracy``, ``test/per_class/<class>/f1``);
              epochs_trained, best_epoch, ``seconds/<duration>``
    tags      xai.run_id, xai.source, xai.architecture, xai.status, ``xai.version.<library>``
"""

from __future__ import annotations

import json
import math
from typing import Any

from core import runs

MAX_PARAM_CHARS = 6000  # MLflow 3 refuses longer parameter values


def params_of(run: runs.Run) -> dict[str, str]:
    """The MLflow parameters of a run: every hyper-parameter (None too: "not used") and what the run was
    trained on (left out where run.json does not say)."""
    meta = run.meta
    size = meta.get("input_size")
    described = {
        "architecture": meta.get("architecture"),
        "source": meta.get("source", "trained"),
        "dataset": meta.get("dataset"),
        "imported_from": meta.get("imported_from"),
        "preprocessing": meta.get("preprocessing"),
        "input_size": "x".join(str(v) for v in size) if isinstance(size, list) else None,
        "class_names": json.dumps(run.class_names),
        "num_classes": len(run.class_names),
        "class_weights_used": json.dumps(meta["class_weights"]) if meta.get("class_weights") else "none",
        **{f"split_{split}": count for split, count in (meta.get("split_counts") or {}).items()},
        "seed": meta.get("seed"),
    }
    params = {k: v for k, v in described.items() if v is not None}
    params.update(meta.get("hyperparameters") or {})
    return {safe_key(k): param_text(v) for k, v in params.items()}


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's scalars (numbers, not booleans, finite) as ``test/<path>`` -> value."""
    flat: dict[str, float] = {}

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, [*path, str(key)])
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat["/".join(["test", *(safe_key(p) for p in path)])] = float(value)

    walk(metrics, [])
    return flat


def run_metrics(run: runs.Run) -> dict[str, float]:
    """What run.json says about the training itself: epochs_trained, best_epoch, ``seconds/<duration>``."""
    meta = run.meta
    values = {k: meta.get(k) for k in ("epochs_trained", "best_epoch")}
    values.update({f"seconds/{k}": v for k, v in (meta.get("durations") or {}).items()})
    return {safe_key(k): float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tags_of(run: runs.Run) -> dict[str, str]:
    tags = {
        "xai.run_id": run.id,
        "xai.source": str(run.meta.get("source", "trained")),
        "xai.architecture": str(run.meta.get("architecture", "")),
        "xai.status": run.status,
    }
    tags.update({f"xai.version.{k}": str(v) for k, v in (run.meta.get("library_versions") or {}).items()})
    return tags


def safe_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . : /`` and spaces: anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-.:/ " else "_" for c in str(name)) or "_"


def param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"
