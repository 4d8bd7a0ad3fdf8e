"""The Trust table of a run: per method over its test set (or N images), the evidence for its maps.

Per method: mean deletion and insertion AUC (with a random map's as the reference), the randomisation
verdict (cascade on a few images, `core.sanity`), class sensitivity, and localisation scores where the
dataset has masks (`core.masks`). Saved in the run as ``trust.json`` (atomically, with the protocol's
parameters and the library versions) and ``trust_maps.npz`` (the cascade strip of the first image per method).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from core import runs, trust

TRUST_FILE = "trust.json"
TRUST_MAPS_FILE = "trust_maps.npz"
ProgressFn = Callable[[float, str], None]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _localisation(maps, masks) -> dict | None:
    scored = [trust.localisation(m, k) for m, k in zip(maps, masks) if k is not None and k.any()]
    if not scored:
        return None
    return {
        "images": len(scored),
        "pointing_game": _mean([float(s["pointing_game"]) for s in scored]),
        "energy_pointing_game": _mean([s["energy_pointing_game"] for s in scored]),
        "top_k_iou": _mean([s["top_k_iou"] for s in scored]),
        "top_k": "the mask's own share of the image",
    }


def trust_report(
    run: runs.Run,
    methods=None,
    limit: int | None = 32,
    sanity_images: int = 4,
    steps: int = trust.DEFAULT_STEPS,
    params: dict | None = None,
    progress: ProgressFn | None = None,
    model=None,
    save: bool = True,
) -> dict:
    """Scores every method in ``methods`` (default: all of `core.explain.METHODS`) on the run's test images.

    The explained class is the model's predicted class. A method that cannot apply gets ``{"error": ...}``.
    Returns the report (also saved in the run when ``save``); ``report["strips"]`` holds the cascade maps.
    """
    from core import system
    from core.audit import run_test_images
    from core.data import load_images
    from core.explain import METHODS, describe, explain
    from core.masks import masks_for
    from core.model_import import load_run_model
    from core.models import input_size, predict_proba

    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown or no methods. Expected some of {list(METHODS)}. Received: {methods}")
    started = time.perf_counter()
    model = model if model is not None else load_run_model(run.path)
    size = input_size(model)
    test, _ = run_test_images(run, limit)
    images = load_images(list(test["path"]), size)
    targets = predict_proba(model, images).argmax(axis=1).astype(int)
    masks = masks_for(list(test["path"]), run.meta.get("dataset"), size)
    settings = {"steps": steps}
    total = len(methods) + 1

    def tell(done: float, message: str) -> None:
        if progress:
            progress(min(done / total, 1.0), message)

    tell(0, f"Random reference on {len(images)} images")
    reference = [
        trust.deletion_insertion(model, image, trust.random_map(size, i), int(t), **settings)
        for i, (image, t) in enumerate(zip(images, targets))
    ]
    report = {
        "run": run.id,
        "images": int(len(images)),
        "explained_class": "predicted",
        "masks": int(sum(m is not None for m in masks)),
        "protocol": trust.protocol(steps, size=size),
        "random_reference": {
            "deletion_auc": _mean([r["deletion_auc"] for r in reference]),
            "insertion_auc": _mean([r["insertion_auc"] for r in reference]),
            "mean_deletion_curve": np.mean([r["deletion_curve"] for r in reference], axis=0).tolist(),
            "mean_insertion_curve": np.mean([r["insertion_curve"] for r in reference], axis=0).tolist(),
            "fractions": reference[0]["fractions"],
        },
        "sanity": {"images": int(min(sanity_images, len(images))), "seed": 0},
        "methods": {},
    }
    strips: dict[str, np.ndarray] = {}
    for number, method in enumerate(methods, start=1):
        tell(number - 0.5, f"Scoring {describe(method)['title']}")
        method_params = dict((params or {}).get(method, {}))
        began = time.perf_counter()
        try:
            maps = explain(model, images, method, class_index=[int(t) for t in targets], **method_params)
            curves = [
                trust.deletion_insertion(model, image, m, int(t), **settings)
                for image, m, t in zip(images, maps, targets)
            ]
            entry = {
                "deletion_auc": _mean([c["deletion_auc"] for c in curves]),
                "insertion_auc": _mean([c["insertion_auc"] for c in curves]),
                "deletion_auc_std": float(np.std([c["deletion_auc"] for c in curves])),
                "insertion_auc_std": float(np.std([c["insertion_auc"] for c in curves])),
                "mean_deletion_curve": np.mean([c["deletion_curve"] for c in curves], axis=0).tolist(),
                "mean_insertion_curve": np.mean([c["insertion_curve"] for c in curves], axis=0).tolist(),
                "localisation": _localisation(maps, masks),
                "params": method_params,
            }
            if sanity_images:
                try:
                    entry.update(_sanity(model, images[:sanity_images], targets[:sanity_images], method, method_params))
                    strips[method] = entry.pop("strip")
                except Exception as exc:  # faithfulness and localisation stand without the sanity checks
                    entry["sanity_error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # one method failing must not hide the others
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.perf_counter() - began, 3)
        report["methods"][method] = entry
    scored = {m: e for m, e in report["methods"].items() if "error" not in e}
    report["ranking"] = [{"method": m, "insertion_minus_deletion": d} for m, d in trust.rank_methods(scored)]
    report.update(
        {
            "created_at": runs.utc_now(),
            "seconds": round(time.perf_counter() - started, 3),
            "library_versions": system.library_versions(),
        }
    )
    tell(total, "Done")
    if save:
        save_trust(run, report, strips)
    report["strips"] = strips
    return report


def _sanity(model, images, targets, method: str, params: dict) -> dict:
    """The randomisation cascade and the class check on a few images (`core.sanity`), for the report."""
    from core.sanity import class_sensitivity, randomization_cascade

    classes = [int(t) for t in targets]
    cascade = randomization_cascade(model, images, method, classes, params)
    randomisation = {key: cascade[key] for key in ("passed", "verdict", "final_spearman", "final_ssim", "threshold")}
    randomisation["stages"] = [
        {k: s[k] for k in ("stage", "top_layer", "mean_spearman", "mean_ssim")} for s in cascade["stages"]
    ]
    sensitivity = class_sensitivity(model, images, method, classes, params)
    return {
        "randomisation": randomisation,
        "class_sensitivity": {
            key: sensitivity[key] for key in ("class_sensitive", "mean_spearman", "mean_ssim", "verdict")
        },
        "strip": cascade["maps"][:, 0],
    }


def save_trust(run: runs.Run, report: dict, strips: dict[str, np.ndarray]) -> None:
    from core.visualize import npz_bytes

    if strips:
        runs.atomic_write_bytes(run.file(TRUST_MAPS_FILE), npz_bytes(strips))
    runs.atomic_write_json(run.file(TRUST_FILE), {k: v for k, v in report.items() if k != "strips"})


def load_trust(run: runs.Run) -> dict | None:
    """The saved trust report with its cascade strips, or None when the run has none (or it is unreadable)."""
    try:
        report = json.loads(run.file(TRUST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    try:
        with np.load(run.file(TRUST_MAPS_FILE)) as saved:
            report["strips"] = {name: saved[name] for name in saved.files}
    except (OSError, ValueError):
        report["strips"] = {}
    return report


def table_rows(report: dict) -> list[dict]:
    """One row per method: what the command line and the page show."""
    rows = []
    reference = report.get("random_reference", {})
    for method, entry in report.get("methods", {}).items():
        if "error" in entry:
            rows.append({"method": method, "error": entry["error"]})
            continue
        local = entry.get("localisation") or {}
        randomisation = entry.get("randomisation") or {}
        sensitivity = entry.get("class_sensitivity") or {}
        rows.append(
            {
                "method": method,
                "deletion AUC (lower better)": entry["deletion_auc"],
                "insertion AUC (higher better)": entry["insertion_auc"],
                "random map deletion": reference.get("deletion_auc"),
                "random map insertion": reference.get("insertion_auc"),
                "randomisation": None if not randomisation else ("passes" if randomisation["passed"] else "fails"),
                "final Spearman": randomisation.get("final_spearman"),
                "class-sensitive": sensitivity.get("class_sensitive"),
                "sanity checks": entry.get("sanity_error"),
                "pointing game": local.get("pointing_game"),
                "energy pointing": local.get("energy_pointing_game"),
                "top-k IoU": local.get("top_k_iou"),
            }
        )
    return rows
