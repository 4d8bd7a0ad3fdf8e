"""Evidence for or against a heatmap: faithfulness (deletion / insertion) and localisation scores.

Metrics take maps, not explainers (they score any method in `core.explain.METHODS`, present or added
later, the same way), and every result records the protocol's parameters.

Faithfulness, Petsiuk et al. 2018 (RISE, https://arxiv.org/abs/1806.07421), protocol fixed here:
    * pixels are ordered by the map, highest first; ties by flat pixel index (a stable sort);
    * with ``steps`` K, point k = 0..K has the first ``round(k * H * W / K)`` pixels changed;
    * deletion: changed pixels take the deletion baseline (black 0, grey 127.5 or the blurred image);
      insertion: start from the insertion baseline (the blurred image by default) and put back the
      original pixels;
    * the curve is the model's probability for the explained class at each point; the AUC is the
      trapezoid rule over the fraction of pixels changed, 0..1. Deletion: lower is better; insertion:
      higher is better;
    * the 2 (K + 1) images of both curves go through the model ``batch_size`` at a time inside one
      compiled call (bounded memory, no Python loop per batch).

Localisation against a ground-truth mask: the pointing game (Zhang et al. 2016,
https://arxiv.org/abs/1608.00507), the energy-based pointing game (Wang et al. 2020, Score-CAM,
https://arxiv.org/abs/1910.01279) and the IoU of the top-k% pixels with the mask.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

BASELINES = ("black", "grey", "blur")
DEFAULT_STEPS = 20
DEFAULT_BATCH_SIZE = 64
BLUR_FRACTION = 0.05
"""The blurred baseline is a Gaussian blur with sigma = this fraction of the image's longer side (at least 1 px)."""

_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class TrustError(ValueError):
    """A score cannot be computed as asked; the message says what was expected and what was received."""


# ----------------------------------------------------------------------------------------------
# Ordering and baselines


def _check_map(saliency, name: str = "saliency") -> np.ndarray:
    array = np.asarray(saliency, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise TrustError(f"Expected {name} as a 2-D map (H, W). Received shape {array.shape}")
    return np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)


def _check_mask(mask, shape) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise TrustError(f"Expected a mask of the map's shape {tuple(shape)}. Received shape {array.shape}")
    return array.astype(bool)


def pixel_order(saliency) -> np.ndarray:
    """Flat pixel indices ordered by the map, highest first; ties by flat index (stable sort)."""
    return np.argsort(-_check_map(saliency).ravel(), kind="stable")


def pixel_ranks(saliency) -> np.ndarray:
    """(H, W) int32: each pixel's position in `pixel_order` (0 = the first pixel changed)."""
    saliency = _check_map(saliency)
    ranks = np.empty(saliency.size, dtype=np.int32)
    ranks[pixel_order(saliency)] = np.arange(saliency.size, dtype=np.int32)
    return ranks.reshape(saliency.shape)


def pixels_changed(height: int, width: int, steps: int) -> list[int]:
    """How many pixels are changed at each point k = 0..K: ``round(k * H * W / K)`` (Python's round)."""
    return [int(round(k * height * width / steps)) for k in range(steps + 1)]


def blur_sigma(height: int, width: int) -> float:
    return max(1.0, BLUR_FRACTION * max(height, width))


def blurred(image) -> np.ndarray:
    """The image under a Gaussian blur of sigma `blur_sigma` (per channel, edges repeated)."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float32)
    sigma = blur_sigma(*image.shape[:2])
    return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest").astype(np.float32)


def baseline_image(image, kind: str) -> np.ndarray:
    """The baseline ``kind`` ("black" 0, "grey" 127.5, "blur") for ``image`` (H, W, 3)."""
    image = np.asarray(image, dtype=np.float32)
    if kind == "black":
        return np.zeros_like(image)
    if kind == "grey":
        return np.full_like(image, 127.5)
    if kind == "blur":
        return blurred(image)
    raise TrustError(f"Unknown baseline. Expected one of {BASELINES}. Received: {kind!r}")


# ----------------------------------------------------------------------------------------------
# The compiled curve function


def _curve_function(model, height: int, width: int, batch_size: int):
    """``(starts, ends, ranks, counts, class_index) -> (S * P,)`` probabilities, one compiled call.

    Curve s, point p: the image ``where(ranks < counts[p], ends[s], starts[s])``; every such image goes
    through the model ``batch_size`` at a time in a ``tf.while_loop``. Cached per (model, size, batch)."""
    import tensorflow as tf

    key = (height, width, batch_size)
    with _LOCK:
        cached = _FUNCTIONS.setdefault(model, {}).get(key)
    if cached is not None:
        return cached
    model_ref = weakref.ref(model)

    def curves(starts, ends, ranks, counts, class_index):
        n_points = tf.shape(counts)[0]
        total = tf.shape(starts)[0] * n_points

        def body(start, values):
            index = tf.range(start, tf.minimum(start + batch_size, total))
            curve, point = index // n_points, index % n_points
            changed = ranks[None] < tf.gather(counts, point)[:, None, None]
            images = tf.where(changed[..., None], tf.gather(ends, curve), tf.gather(starts, curve))
            probs = tf.cast(model_ref()(images, training=False), tf.float32)
            if probs.shape[-1] == 1:  # one sigmoid unit: two classes
                probs = tf.concat([1.0 - probs, probs], axis=-1)
            picked = tf.gather(probs, class_index, axis=1)
            return start + batch_size, tf.tensor_scatter_nd_update(values, index[:, None], picked)

        _, values = tf.while_loop(lambda start, _: start < total, body, (tf.constant(0), tf.zeros([total], tf.float32)))
        return values

    function = tf.function(
        curves,
        input_signature=[
            tf.TensorSpec([None, height, width, 3], tf.float32, name="starts"),
            tf.TensorSpec([None, height, width, 3], tf.float32, name="ends"),
            tf.TensorSpec([height, width], tf.int32, name="ranks"),
            tf.TensorSpec([None], tf.int32, name="counts"),
            tf.TensorSpec([], tf.int32, name="class_index"),
        ],
        autograph=False,
    )
    with _LOCK:
        _FUNCTIONS.setdefault(model, {})[key] = function
    return function


def _auc(fractions, curve) -> float:
    fractions, curve = np.asarray(fractions, np.float64), np.asarray(curve, np.float64)
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def deletion_insertion(
    model,
    image,
    saliency,
    class_index: int,
    steps: int = DEFAULT_STEPS,
    deletion_baseline: str = "black",
    insertion_baseline: str = "blur",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Deletion and insertion curves of one map (Petsiuk et al. 2018), by the protocol of this module.

    Args:
        model: a classifier taking pixels 0-255, outputting probabilities (N, C) (or one sigmoid unit).
        image: (H, W, 3) pixels 0-255 at the model's input size.
        saliency: (H, W) map; only its order matters (highest first, ties by flat index).
        class_index: the explained class.
        steps: K; the curves have K + 1 points.
        deletion_baseline, insertion_baseline: "black", "grey" or "blur".
        batch_size: images per forward pass inside the compiled call (bounds memory).

    Returns:
        ``{"deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve", "fractions",
        "pixels_changed", "class_index", "steps", "deletion_baseline", "insertion_baseline",
        "blur_sigma", "batch_size", "order"}``; curves are lists of K + 1 probabilities.
    """
    import tensorflow as tf

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TrustError(f"Expected one RGB image (H, W, 3). Received shape {image.shape}")
    height, width = image.shape[:2]
    saliency = _check_map(saliency)
    if saliency.shape != (height, width):
        raise TrustError(f"The map is {saliency.shape} but the image is {(height, width)}: sizes must match")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= height * width:
        raise TrustError(f"Expected steps an int between 1 and H * W = {height * width}. Received: steps={steps!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise TrustError(f"Expected batch_size a positive int. Received: batch_size={batch_size!r}")
    for name, kind in (("deletion_baseline", deletion_baseline), ("insertion_baseline", insertion_baseline)):
        if kind not in BASELINES:
            raise TrustError(f"Unknown {name}. Expected one of {BASELINES}. Received: {kind!r}")
    counts = pixels_changed(height, width, int(steps))
    starts = np.stack([image, baseline_image(image, insertion_baseline)])
    ends = np.stack([baseline_image(image, deletion_baseline), image])
    function = _curve_function(model, height, width, int(batch_size))
    values = function(
        tf.constant(starts),
        tf.constant(ends),
        tf.constant(pixel_ranks(saliency)),
        tf.constant(counts, tf.int32),
        tf.constant(int(class_index), tf.int32),
    ).numpy()
    deletion, insertion = values.reshape(2, len(counts)).astype(np.float64)
    fractions = [c / (height * width) for c in counts]
    return {
        "deletion_auc": _auc(fractions, deletion),
        "insertion_auc": _auc(fractions, insertion),
        "deletion_curve": [float(v) for v in deletion],
        "insertion_curve": [float(v) for v in insertion],
        "fractions": fractions,
        "pixels_changed": counts,
        "class_index": int(class_index),
        **protocol(steps, deletion_baseline, insertion_baseline, batch_size, (height, width)),
    }


def protocol(
    steps: int = DEFAULT_STEPS,
    deletion_baseline: str = "black",
    insertion_baseline: str = "blur",
    batch_size: int = DEFAULT_BATCH_SIZE,
    size: tuple[int, int] | None = None,
) -> dict:
    """The protocol's parameters, recorded with every score."""
    entry = {
        "steps": int(steps),
        "deletion_baseline": deletion_baseline,
        "insertion_baseline": insertion_baseline,
        "batch_size": int(batch_size),
        "order": "map value, highest first; ties by flat pixel index",
        "pixels_at_point_k": "round(k * H * W / steps)",
        "auc": "trapezoid rule over the fraction of pixels changed, 0..1",
        "blur": f"Gaussian, sigma = max(1, {BLUR_FRACTION} * longer side) pixels",
    }
    if size is not None:
        entry["blur_sigma"] = blur_sigma(*size)
    return entry


def random_map(shape, seed: int = 0) -> np.ndarray:
    """A uniform random map: the reference a method's scores are compared with."""
    return np.random.default_rng(seed).random(tuple(shape)).astype(np.float32)


def random_reference(model, image, class_index: int, repeats: int = 3, seed: int = 0, **protocol_args) -> dict:
    """Mean deletion and insertion AUC of ``repeats`` random maps (the reference line)."""
    image = np.asarray(image, np.float32)
    results = [
        deletion_insertion(model, image, random_map(image.shape[:2], seed + r), class_index, **protocol_args)
        for r in range(repeats)
    ]
    return {
        "deletion_auc": float(np.mean([r["deletion_auc"] for r in results])),
        "insertion_auc": float(np.mean([r["insertion_auc"] for r in results])),
        "deletion_curve": np.mean([r["deletion_curve"] for r in results], axis=0).tolist(),
        "insertion_curve": np.mean([r["insertion_curve"] for r in results], axis=0).tolist(),
        "repeats": int(repeats),
        "seed": int(seed),
    }


def faithfulness(model, image, maps: dict, class_index: int, repeats: int = 3, **protocol_args) -> dict:
    """Deletion and insertion of every method's map of one image, the random reference, and the ranking:
    what the Explainer shows under each method.

    Args:
        maps: {method: (H, W) map}; a None map (a method that failed) is left out.

    Returns:
        ``{"methods": {method: deletion_insertion result}, "random": random_reference result,
        "ranking": [(method, insertion - deletion)], "protocol": {...}}``.
    """
    scores = {
        method: deletion_insertion(model, image, saliency, class_index, **protocol_args)
        for method, saliency in maps.items()
        if saliency is not None
    }
    reference = random_reference(model, image, class_index, repeats=repeats, **protocol_args)
    size = np.asarray(image).shape[:2]
    return {
        "methods": scores,
        "random": reference,
        "ranking": rank_methods(scores),
        "protocol": protocol(**protocol_args, size=size),
    }


def rank_methods(scores: dict[str, dict]) -> list[tuple[str, float]]:
    """Methods ranked by insertion AUC - deletion AUC (higher first): ``[(method, difference)]``."""
    ranked = [(m, float(s["insertion_auc"] - s["deletion_auc"])) for m, s in scores.items() if s]
    return sorted(ranked, key=lambda item: -item[1])


# ----------------------------------------------------------------------------------------------
# Localisation


def pointing_game(saliency, mask, tolerance: int = 0) -> bool:
    """True when the map's maximum (the first by flat index among equal maxima) falls inside the mask,
    or within ``tolerance`` pixels of it (Zhang et al. use 15 px at 224). False for an empty mask."""
    saliency = _check_map(saliency)
    mask = _check_mask(mask, saliency.shape)
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    if tolerance <= 0:
        return bool(mask[row, col])
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return False
    return bool(np.min((rows - row) ** 2 + (cols - col) ** 2) <= tolerance**2)


def energy_pointing_game(saliency, mask) -> float:
    """The share of the map's mass inside the mask (negative values count as 0); 0.0 for a zero map."""
    saliency = np.clip(_check_map(saliency), 0.0, None)
    mask = _check_mask(mask, saliency.shape)
    total = float(saliency.sum())
    return float(saliency[mask].sum() / total) if total > 0 else 0.0


def top_k_iou(saliency, mask, percent: float | None = None) -> float:
    """IoU of the map's top ``percent`` % pixels (ordered as in `pixel_order`) with the mask.

    ``percent`` None: the mask's own share of the image (a map that ranks exactly the mask first scores 1)."""
    saliency = _check_map(saliency)
    mask = _check_mask(mask, saliency.shape)
    if percent is None:
        count = int(mask.sum())
    else:
        if not 0 < float(percent) <= 100:
            raise TrustError(f"Expected percent in (0, 100]. Received: percent={percent!r}")
        count = int(round(float(percent) / 100.0 * saliency.size))
    top = np.zeros(saliency.size, dtype=bool)
    top[pixel_order(saliency)[:count]] = True
    top = top.reshape(saliency.shape)
    union = int((top | mask).sum())
    return float((top & mask).sum() / union) if union else 0.0


def localisation(saliency, mask, percent: float | None = None) -> dict:
    """All three localisation scores of one map against one mask."""
    return {
        "pointing_game": pointing_game(saliency, mask),
        "energy_pointing_game": energy_pointing_game(saliency, mask),
        "top_k_iou": top_k_iou(saliency, mask, percent),
    }


# ----------------------------------------------------------------------------------------------
# Rank correlation (method agreement, sanity checks)


def spearman(a, b) -> float:
    """Spearman rank correlation of two maps (flattened); 0.0 when either is constant."""
    from scipy.stats import rankdata

    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if a.shape != b.shape:
        raise TrustError(f"Maps must have the same shape. Received {np.shape(a)} and {np.shape(b)}")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0
