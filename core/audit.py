"""The dataset audit: what the model looks at, per class, over the whole test set (or N images).

Every test image is explained (for its true class) in batches, images decoded ahead while the model
runs. Per class: the mean map, and the share of map mass in the border band (outer 10% of each side),
in each corner square (side 25%) and in the centre square (side 50%), compared with the other classes and
with a uniform map. A class whose maps concentrate on the border or a corner far beyond the other classes
and a uniform map is flagged, and the flag is tested counterfactually: the region is hidden (grey) in
every test image, and the accuracy and mean probability of the true class are reported before and after,
for the class and for the others. Also: the agreement between methods (mean Spearman rank correlation
of their maps over the same images).

Results are saved in the run: ``audit.json`` (numbers) and ``audit_maps.npz`` (the mean map per class).
Over a large test set the images can be sharded over a `tf.distribute` strategy's replicas and workers
(`core.sharding`); ``audit.json`` records who computed it under ``distribution``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core import runs
from core.trust import spearman

AUDIT_FILE = "audit.json"
AUDIT_MAPS_FILE = "audit_maps.npz"
AUDIT_PARTS_DIR = "audit.parts"  # each worker's part while a multi-worker audit gathers (core.sharding)
BORDER_FRACTION = 0.10
CORNER_FRACTION = 0.25
CENTRE_FRACTION = 0.50
REGIONS = ("border", "top_left", "top_right", "bottom_left", "bottom_right", "centre")
FLAGGABLE = REGIONS[:5]
GREY = 127.5
# A class is flagged for a region when its mean share there is at least LIFT_VS_UNIFORM times what a
# uniform map gives, at least LIFT_VS_OTHERS times the other classes' mean share, and MIN_EXCESS above it.
LIFT_VS_UNIFORM = 2.5
LIFT_VS_OTHERS = 2.0
MIN_EXCESS = 0.10
MIN_CONSISTENCY = 0.5  # ... and in at least this fraction of its images, the region holds LIFT_VS_UNIFORM x uniform
RECOGNISED_MARGIN = 0.10  # a class is flagged only if its mean true-class probability is >= max(0.5, 1/C + this)
RELIED_DROP = 0.10  # an accuracy drop (beyond the other classes') of at least this when hidden: the model relies on it
SMALL_DROP = 0.02  # ... at least this: it partly relies on it

ProgressFn = Callable[[float, str], None]


# ----------------------------------------------------------------------------------------------
# Regions


def region_masks(height: int, width: int) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks of the audit's regions."""
    rows, cols = np.mgrid[0:height, 0:width]
    band_h, band_w = max(1, round(BORDER_FRACTION * height)), max(1, round(BORDER_FRACTION * width))
    corner_h, corner_w = max(1, round(CORNER_FRACTION * height)), max(1, round(CORNER_FRACTION * width))
    top, bottom = rows < corner_h, rows >= height - corner_h
    left, right = cols < corner_w, cols >= width - corner_w
    centre_h, centre_w = round(CENTRE_FRACTION * height), round(CENTRE_FRACTION * width)
    r0, c0 = (height - centre_h) // 2, (width - centre_w) // 2
    return {
        "border": (rows < band_h) | (rows >= height - band_h) | (cols < band_w) | (cols >= width - band_w),
        "top_left": top & left,
        "top_right": top & right,
        "bottom_left": bottom & left,
        "bottom_right": bottom & right,
        "centre": (rows >= r0) & (rows < r0 + centre_h) & (cols >= c0) & (cols < c0 + centre_w),
    }


def uniform_shares(height: int, width: int) -> dict[str, float]:
    """What a uniform map puts in each region: its share of the image's area."""
    return {name: float(mask.mean()) for name, mask in region_masks(height, width).items()}


def region_shares(maps) -> np.ndarray:
    """(N, len(REGIONS)) share of each map's mass in each region; a zero map gives the uniform shares."""
    maps = np.clip(np.nan_to_num(np.asarray(maps, np.float64)), 0.0, None)
    n, height, width = maps.shape
    masks = region_masks(height, width)
    totals = maps.reshape(n, -1).sum(axis=1)
    shares = np.stack([(maps * masks[r]).reshape(n, -1).sum(axis=1) for r in REGIONS], axis=1)
    uniform = np.array([masks[r].mean() for r in REGIONS])
    return np.where(totals[:, None] > 0, shares / np.where(totals > 0, totals, 1.0)[:, None], uniform[None])


def hide_region(images, region: str) -> np.ndarray:
    """A copy of ``images`` (N, H, W, 3) with ``region`` grey (127.5)."""
    images = np.array(images, dtype=np.float32, copy=True)
    images[:, region_masks(*images.shape[1:3])[region]] = GREY
    return images


# ----------------------------------------------------------------------------------------------
# Flags (pure: testable on hand-made shares)


def flag_classes(
    class_shares: dict[str, dict[str, float]],
    uniform: dict[str, float],
    consistency: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict]:
    """Per class: the flaggable region where its maps concentrate most beyond the other classes.

    Args:
        class_shares: class -> region -> mean share of map mass (classes with no images left out).
        uniform: region -> a uniform map's share.
        consistency: class -> region -> the fraction of the class's images whose own share there is at least
            ``LIFT_VS_UNIFORM`` times uniform (one extreme map must not flag a class); None: not checked.

    Returns:
        class -> {"flagged", "region" (None unless flagged), "candidate_region", "share", "others_share",
        "uniform_share", "lift_vs_others", "lift_vs_uniform", "consistency"}.
    """
    flags = {}
    for name, shares in class_shares.items():
        others = [s for other, s in class_shares.items() if other != name]
        best = None
        for region in FLAGGABLE:
            share = shares[region]
            others_share = float(np.mean([o[region] for o in others])) if others else uniform[region]
            entry = {
                "candidate_region": region,
                "share": share,
                "others_share": others_share,
                "uniform_share": uniform[region],
                "lift_vs_others": share / max(others_share, 1e-9),
                "lift_vs_uniform": share / uniform[region],
                "consistency": None if consistency is None else consistency[name][region],
            }
            entry["flagged"] = bool(
                entry["lift_vs_uniform"] >= LIFT_VS_UNIFORM
                and entry["lift_vs_others"] >= LIFT_VS_OTHERS
                and share - others_share >= MIN_EXCESS
                and (entry["consistency"] is None or entry["consistency"] >= MIN_CONSISTENCY)
            )
            key = (entry["flagged"], share - others_share)
            if best is None or key > best[0]:
                best = (key, entry)
        entry = best[1]
        entry["region"] = entry["candidate_region"] if entry["flagged"] else None
        flags[name] = entry
    return flags


def recognised_level(n_classes: int) -> float:
    """The mean probability of the true class above which a class counts as recognised by the model."""
    return max(0.5, 1.0 / max(n_classes, 1) + RECOGNISED_MARGIN)


def flag_text(name: str, entry: dict) -> str:
    """The flag and its counterfactual test in words, naming the quantities the Audit page's bar chart shows.

    ``entry["share"]`` is the class's mean share of map mass in ``candidate_region``: the flaggable region
    (border band or a corner square) where that share exceeds the other classes' mean share the most, which is
    not necessarily the region with the largest share.
    """
    region = entry["candidate_region"]
    label = "border band" if region == "border" else region.replace("_", "-") + " corner"
    share = (
        f"{entry['share']:.0%} of its map mass lies in the {label} (other classes {entry['others_share']:.0%}, "
        f"a uniform map {entry['uniform_share']:.0%}: the “{label}” bars)"
    )
    if entry.get("consistency") is not None:
        share += (
            f"; in {entry['consistency']:.0%} of its maps it holds {LIFT_VS_UNIFORM:g}x a uniform map's share or more"
        )
    if entry.get("unrecognised_concentration"):
        return (
            f"{name}: not flagged, though its maps concentrate on the {label}: {share}. The model does not "
            f"recognise this class (mean probability {entry['probability_before']:.0%}), so its maps explain little."
        )
    if not entry["flagged"]:
        return (
            f"{name}: not flagged. Of the border band and the four corners, the {label} is where its maps exceed "
            f"the other classes' share the most: {share}."
        )
    before, after = entry.get("accuracy_before"), entry.get("accuracy_after")
    text = f"{name}: FLAGGED, its maps concentrate on the {label}: {share}."
    if before is None or after is None:
        return text
    others = ""
    if entry.get("others_accuracy_before") is not None:
        others = f" (other classes {entry['others_accuracy_before']:.0%} to {entry['others_accuracy_after']:.0%})"
    drop = excess_drop(entry)
    if drop >= RELIED_DROP:
        return (
            f"{text} Hiding the {label} drops its accuracy from {before:.0%} to {after:.0%}{others}: the model "
            "relies on it, a likely shortcut."
        )
    if drop >= SMALL_DROP:
        return (
            f"{text} Hiding the {label} lowers its accuracy from {before:.0%} to {after:.0%}{others}: the model "
            "partly relies on it (it also uses other evidence)."
        )
    return (
        f"{text} Hiding the {label} leaves its accuracy at {after:.0%} (was {before:.0%}){others}: no accuracy "
        "drop, so the maps point there but the decision does not depend on it."
    )


def excess_drop(entry: dict) -> float:
    """The class's accuracy drop when its region is hidden, minus the other classes' drop (0 when unknown)."""
    if entry.get("accuracy_before") is None or entry.get("accuracy_after") is None:
        return 0.0
    drop = entry["accuracy_before"] - entry["accuracy_after"]
    if entry.get("others_accuracy_before") is not None and entry.get("others_accuracy_after") is not None:
        drop -= max(0.0, entry["others_accuracy_before"] - entry["others_accuracy_after"])
    return float(drop)


# ----------------------------------------------------------------------------------------------
# Test images of a run


def test_split(run: runs.Run):
    """The run's test split (path, split, class_name, label), as recorded at training time."""
    try:
        from core.finishing import test_split_of
    except ImportError:  # older layout
        from core.training import test_split_of
    return test_split_of(run)


def balanced_head(frame, limit: int | None):
    """The first ``limit`` rows taking classes in turn (all rows when limit is None)."""
    if limit is None or limit >= len(frame):
        return frame.reset_index(drop=True)
    if limit < 1:
        raise ValueError(f"Expected limit at least 1. Received: limit={limit}")
    turn = frame.groupby("class_name", sort=False).cumcount()
    order = frame.assign(_turn=turn.values, _row=np.arange(len(frame))).sort_values(["_turn", "_row"])
    return order.head(limit).drop(columns=["_turn", "_row"]).reset_index(drop=True)


def run_test_images(run: runs.Run, limit: int | None = None):
    """(test frame limited to N, labels as the model's class indices)."""
    test = balanced_head(test_split(run), limit)
    if test.empty:
        raise runs.RunError(f"Run {run.id} has no test images to audit")
    names = run.class_names
    unknown = sorted(set(test["class_name"]) - set(names))
    if unknown:
        raise runs.RunError(f"Run {run.id}: test classes {unknown} are not among the model's classes {names}")
    labels = np.array([names.index(c) for c in test["class_name"]], dtype=np.int32)
    return test, labels


def batches_ahead(paths: list[str], size: tuple[int, int], batch_size: int):
    """Yields (start, images) batches, the next batch decoded in a thread while the caller works."""
    from core.data import load_images

    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load_images, paths[:batch_size], size)
        for number, start in enumerate(starts):
            images = future.result()
            if number + 1 < len(starts):
                following = starts[number + 1]
                future = pool.submit(load_images, paths[following : following + batch_size], size)
            yield start, images


# ----------------------------------------------------------------------------------------------
# The audit


def audit_model(
    model,
    paths: list[str],
    labels,
    class_names: list[str],
    method: str = "gradcam",
    params: dict | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    decide=None,
    placement=None,
    parts_dir=None,
) -> dict | None:
    """Audits ``model`` on the images at ``paths`` (true classes ``labels``). See the module docstring.

    ``decide`` turns probabilities (N, C) into predicted classes (N,) (default argmax; a run's saved
    decision threshold, see `core.explorer.predicted_index`): accuracies before and after hiding use it.

    ``placement`` (`core.sharding.make_placement`; None: this thread, as ever) shards the images over its
    replicas and workers, ``batch_size`` images per replica at a time; with several workers each writes its
    part into ``parts_dir`` (a folder they all share) and the chief merges them (`core.sharding`).

    Returns:
        ``{"method", "params", "images", "regions", "uniform", "classes": {name: {...flag entry, "images",
        "shares", "accuracy_before", "accuracy_after", "probability_before", "probability_after",
        "others_accuracy_before", "others_accuracy_after", "text"}}, "mean_maps": {name: (H, W)},
        "flagged": [names], "distribution": {"strategy", "replicas", "workers", ...}, "seconds"}``; None on
        a worker that is not the chief.
    """
    from core import sharding
    from core.data import load_images
    from core.explain import explain
    from core.models import input_size, predict_proba

    started = time.perf_counter()
    decide = decide or (lambda probs: probs.argmax(axis=1))
    labels = np.asarray(labels, dtype=np.int32)
    paths = list(paths)
    height, width = input_size(model)
    n_classes = len(class_names)

    def load(indices):
        return load_images([paths[i] for i in indices], (height, width))

    def work(indices, images, totals):
        """One batch on one replica: its maps added to the class sums; its rows."""
        chosen = labels[indices]
        rows = np.arange(len(images))
        maps = explain(model, images, method, class_index=[int(c) for c in chosen], **(params or {}))
        np.add.at(totals["sums"], chosen, maps)
        probs = predict_proba(model, images, batch_size)
        out = {
            "shares": region_shares(maps),
            "probs_before": probs[rows, chosen].astype(np.float64),
            "correct_before": decide(probs) == chosen,
        }
        for region in FLAGGABLE:
            hidden = predict_proba(model, hide_region(images, region), batch_size)
            out[f"probs_after.{region}"] = hidden[rows, chosen].astype(np.float64)
            out[f"correct_after.{region}"] = decide(hidden) == chosen
        return out

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), f"Explained {done} of {total} test images with {method}")

    gathered = sharding.map_shards(
        placement,
        len(paths),
        batch_size,
        work,
        load=load,
        totals={"sums": np.zeros((n_classes, height, width), np.float64)},
        progress=report if progress else None,
        parts_dir=parts_dir,
    )
    if gathered is None:  # a worker that is not the chief: the chief has every part
        return None
    sums = gathered.totals["sums"]
    none = {"shares": np.zeros((0, len(REGIONS))), "probs": np.zeros(0), "correct": np.zeros(0, bool)}  # no images
    shares = gathered.rows.get("shares", none["shares"])
    probs_before = gathered.rows.get("probs_before", none["probs"])
    correct_before = gathered.rows.get("correct_before", none["correct"])
    probs_after = {r: gathered.rows.get(f"probs_after.{r}", none["probs"]) for r in FLAGGABLE}
    correct_after = {r: gathered.rows.get(f"correct_after.{r}", none["correct"]) for r in FLAGGABLE}
    uniform = uniform_shares(height, width)
    present = [c for c in range(n_classes) if (labels == c).any()]
    class_shares = {
        class_names[c]: {r: float(shares[labels == c, i].mean()) for i, r in enumerate(REGIONS)} for c in present
    }
    above = shares >= LIFT_VS_UNIFORM * np.array([uniform[r] for r in REGIONS])[None]
    consistency = {
        class_names[c]: {r: float(above[labels == c, i].mean()) for i, r in enumerate(REGIONS)} for c in present
    }
    flags = flag_classes(class_shares, uniform, consistency)
    classes = {}
    for c in present:
        name, own, rest = class_names[c], labels == c, labels != c
        entry = dict(flags[name])
        region = entry["candidate_region"]

        def mean_of(values, where):
            return float(values[where].mean()) if where.any() else None

        entry.update(
            {
                "images": int(own.sum()),
                "shares": class_shares[name],
                "accuracy_before": mean_of(correct_before, own),
                "accuracy_after": mean_of(correct_after[region], own),
                "probability_before": mean_of(probs_before, own),
                "probability_after": mean_of(probs_after[region], own),
                "others_accuracy_before": mean_of(correct_before, rest),
                "others_accuracy_after": mean_of(correct_after[region], rest),
                "hidden_region": region,
            }
        )
        entry["recognised"] = bool(entry["probability_before"] >= recognised_level(n_classes))
        if entry["flagged"] and not entry["recognised"]:
            entry.update(flagged=False, region=None, unrecognised_concentration=True)
        entry["accuracy_drop"] = excess_drop(entry)
        entry["text"] = flag_text(name, entry)
        classes[name] = entry
    return {
        "method": method,
        "params": dict(params or {}),
        "explained_class": "true class",
        "images": len(paths),
        "input_size": [height, width],
        "regions": {
            "border": f"outer {BORDER_FRACTION:.0%} of each side",
            "corners": f"squares of side {CORNER_FRACTION:.0%} of the image",
            "centre": f"central square of side {CENTRE_FRACTION:.0%}",
        },
        "thresholds": {
            "lift_vs_uniform": LIFT_VS_UNIFORM,
            "lift_vs_others": LIFT_VS_OTHERS,
            "min_excess": MIN_EXCESS,
            "min_consistency": MIN_CONSISTENCY,
            "recognised_probability": recognised_level(n_classes),
            "relied_drop": RELIED_DROP,
            "small_drop": SMALL_DROP,
        },
        "uniform": uniform,
        "classes": classes,
        "flagged": [name for name, entry in classes.items() if entry["flagged"]],
        "mean_maps": {class_names[c]: (sums[c] / max(int((labels == c).sum()), 1)).astype(np.float32) for c in present},
        "distribution": sharding.describe(placement),
        "seconds": round(time.perf_counter() - started, 3),
    }


def method_agreement(model, images, methods, class_index, params: dict | None = None) -> dict:
    """Mean Spearman rank correlation between every pair of methods' maps over the same images.

    ``params``: {method: {param: value}}; a method that cannot apply is listed under ``errors``.
    Returns ``{"methods", "matrix" (list of lists, 1 on the diagonal), "images", "errors"}``."""
    from core.explain import explain

    maps, errors = {}, {}
    for method in methods:
        try:
            maps[method] = explain(model, images, method, class_index=class_index, **(params or {}).get(method, {}))
        except Exception as exc:  # one method failing must not hide the others
            errors[method] = f"{type(exc).__name__}: {exc}"
    names = list(maps)
    matrix = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            value = float(np.mean([spearman(x, y) for x, y in zip(maps[a], maps[names[j]])]))
            matrix[i, j] = matrix[j, i] = value
    return {"methods": names, "matrix": matrix.tolist(), "images": int(len(images)), "errors": errors}


def confusion_cell_maps(model, paths, true_index: int, predicted_index: int, methods, params: dict | None = None):
    """The drill-down of one confusion-matrix cell (true A, predicted B): its images, their probabilities and,
    per method, the maps for A and for B side by side.

    Returns ``{"images": (N, H, W, 3), "probabilities": (N, C), "maps": {method: {"true": (N, H, W),
    "predicted": (N, H, W)} or {"error": message}}}``."""
    from core.data import load_images
    from core.explain import explain
    from core.models import input_size, predict_proba

    images = load_images([str(p) for p in paths], input_size(model))
    maps = {}
    for method in methods:
        options = (params or {}).get(method, {})
        try:
            maps[method] = {
                "true": explain(model, images, method, class_index=int(true_index), **options),
                "predicted": explain(model, images, method, class_index=int(predicted_index), **options),
            }
        except Exception as exc:  # one method failing must not hide the others
            maps[method] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"images": images, "probabilities": predict_proba(model, images) if len(images) else None, "maps": maps}


def fast_params(methods) -> dict[str, dict]:
    """Each method's cheap setting (``Explainer.fast_params``), for the agreement matrix."""
    from core.explain import get_explainer

    return {m: dict(getattr(get_explainer(m), "fast_params", {}) or {}) for m in methods}


def audit_run(
    run: runs.Run,
    method: str = "gradcam",
    limit: int | None = None,
    params: dict | None = None,
    batch_size: int = 32,
    agreement_images: int = 8,
    agreement_methods=None,
    progress: ProgressFn | None = None,
    model=None,
    save: bool = True,
    placement=None,
) -> dict | None:
    """Audits a run's model on its test split (or ``limit`` images, classes in turn); saves the result in
    the run (``audit.json``, ``audit_maps.npz``) and returns it (mean maps as arrays).

    ``placement`` (`core.sharding.make_placement`) shards the images over replicas and workers; with several
    workers they gather their parts in ``<run>/audit.parts`` (the run folder must be shared), only the chief
    computes the agreement matrix and saves, and the other workers get None."""
    from core import system
    from core.explain import METHODS
    from core.model_import import load_run_model

    if method not in METHODS:
        raise ValueError(f"Unknown method. Expected one of {list(METHODS)}. Received: method={method!r}")
    test, labels = run_test_images(run, limit)
    model = model if model is not None else load_run_model(run.path)
    from core.explorer import predicted_index

    report = audit_model(
        model,
        list(test["path"]),
        labels,
        run.class_names,
        method,
        params,
        batch_size,
        progress=progress,
        decide=lambda probs: predicted_index(run, probs),  # the run's saved threshold, if any
        placement=placement,
        parts_dir=run.path / AUDIT_PARTS_DIR,
    )
    if report is None:  # a worker that is not the chief
        return None
    if agreement_images:
        from core.data import load_images
        from core.models import input_size

        chosen = balanced_head(test.assign(label=labels), agreement_images)
        images = load_images(list(chosen["path"]), input_size(model))
        methods = list(agreement_methods) if agreement_methods is not None else list(METHODS)
        if progress:
            progress(1.0, f"Comparing {len(methods)} methods on {len(images)} images")
        report["agreement"] = {
            **method_agreement(model, images, methods, [int(c) for c in chosen["label"]], fast_params(methods)),
            "params": "each method's fast setting",
        }
    report.update({"run": run.id, "created_at": runs.utc_now(), "library_versions": system.library_versions()})
    if save:
        save_audit(run, report)
    return report


def save_audit(run: runs.Run, report: dict) -> None:
    """``audit.json`` (everything but the maps) and ``audit_maps.npz`` (mean map per class), atomically."""
    from core.visualize import npz_bytes

    runs.atomic_write_bytes(run.file(AUDIT_MAPS_FILE), npz_bytes(report["mean_maps"]))
    runs.atomic_write_json(run.file(AUDIT_FILE), {k: v for k, v in report.items() if k != "mean_maps"})


def load_audit(run: runs.Run) -> dict | None:
    """The saved audit with its mean maps, or None when the run has none (or it cannot be read)."""
    import json

    try:
        report = json.loads(run.file(AUDIT_FILE).read_text("utf-8"))
        with np.load(run.file(AUDIT_MAPS_FILE)) as saved:
            report["mean_maps"] = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, KeyError):
        return None
    return report


def summary_json(report: dict) -> dict:
    """What ``python -m core audit --json`` prints: the report without arrays."""
    return {k: v for k, v in report.items() if k != "mean_maps"}
