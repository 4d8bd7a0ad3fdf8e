"""Sanity checks for explanation methods (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292).

* Model-parameter randomisation, cascading from the output layer down: on a *copy* of the model
  (``keras.models.clone_model`` with the trained weights copied in), the weights of more and more layers
  are re-initialised with fresh initialisers (seeded), the map is recomputed at every stage, and compared
  with the original map by the Spearman rank correlation of absolute values and by SSIM. A method whose
  maps stay similar when the weights are random does not explain the model: it fails.
* Class sensitivity (the random-other-class check): the map for the explained class against the map for
  another class chosen at random; similar maps say the method is not class-sensitive.

The model passed in is never changed (callers can compare its predictions before and after, bit for bit).
A method is a name from `core.explain.METHODS` or, for tests and new ideas, any callable
``explain_fn(model, images, class_index) -> maps (N, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.trust import spearman

SIMILARITY_THRESHOLD = 0.5
"""A method fails when, with every layer randomised, its maps still have a mean Spearman rank correlation
(of absolute values) with the original maps of at least this; the same threshold says a method is not
class-sensitive."""
MAX_STAGES = 6


class SanityError(ValueError):
    """A check cannot run on this model as asked; the message says why."""


# ----------------------------------------------------------------------------------------------
# The copy and its layers


def model_copy(model):
    """A separate model with the same architecture and the same weights (the run's model is untouched)."""
    import keras

    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    except Exception as exc:
        raise SanityError(
            "The randomisation check needs a Keras model whose layers can be cloned (a .keras model; an "
            f"imported SavedModel is opaque). Cloning failed: {type(exc).__name__}: {exc}"
        ) from exc
    return copy


def _weighted_layers(model):
    """Every layer holding weights, in forward order, nested models expanded (input adapters left out)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _weighted_layers(layer)
        elif layer.weights and not getattr(layer, "is_input_adapter", False):
            yield layer


def layer_units(model) -> list[list]:
    """Weighted layers grouped into units (a BatchNormalization joins the layer before it), from the
    output down: the order in which the cascade randomises them."""
    import keras

    units: list[list] = []
    for layer in _weighted_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and units:
            units[-1].append(layer)
        else:
            units.append([layer])
    return units[::-1]


def stage_cuts(n_units: int, max_stages: int = MAX_STAGES) -> list[int]:
    """How many units (from the top) are randomised at each stage after the original: ends with all."""
    if n_units <= max_stages:
        return list(range(1, n_units + 1))
    return sorted({int(round(v)) for v in np.linspace(1, n_units, max_stages)})


def reinitialise(layer, seed: int) -> None:
    """Assigns fresh values to every weight of ``layer`` from its own initialisers, seeded.

    A weight named ``kernel`` takes ``layer.kernel_initializer`` (``bias``, ``gamma``, ``moving_mean``...
    likewise); a weight without one takes Glorot-uniform (matrices) or zeros (vectors)."""
    import keras

    for number, variable in enumerate(layer.weights):
        name = variable.name.split("/")[-1].split(":")[0]
        initializer = getattr(layer, f"{name}_initializer", None)
        if initializer is not None:
            config = initializer.get_config()
            if "seed" in config:
                initializer = initializer.__class__.from_config({**config, "seed": seed * 1000 + number})
        elif len(variable.shape) >= 2:
            initializer = keras.initializers.GlorotUniform(seed=seed * 1000 + number)
        else:
            initializer = keras.initializers.Zeros()
        variable.assign(keras.ops.cast(initializer(tuple(variable.shape), dtype=variable.dtype), variable.dtype))


# ----------------------------------------------------------------------------------------------
# Similarity


def _scaled(maps: np.ndarray) -> np.ndarray:
    """|maps| divided by each map's maximum (zero maps stay zero)."""
    maps = np.abs(np.nan_to_num(np.asarray(maps, np.float64)))
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return maps / np.where(peak > 0, peak, 1.0)[:, None, None]


def ssim(a, b) -> float:
    """Structural similarity of two maps in [0, 1] (scikit-image, 7-pixel window or the image side)."""
    from skimage.metrics import structural_similarity

    side = min(7, *np.shape(a))
    window = side if side % 2 else side - 1
    return float(structural_similarity(np.asarray(a), np.asarray(b), data_range=1.0, win_size=max(window, 3)))


def similarity(original: np.ndarray, other: np.ndarray) -> dict:
    """Per-image Spearman of |maps| and SSIM of |maps| / max, and their means."""
    original, other = np.asarray(original), np.asarray(other)
    rank = [spearman(np.abs(a), np.abs(b)) for a, b in zip(original, other)]
    scaled_a, scaled_b = _scaled(original), _scaled(other)
    structure = [ssim(a, b) for a, b in zip(scaled_a, scaled_b)]
    return {
        "spearman": rank,
        "ssim": structure,
        "mean_spearman": float(np.mean(rank)),
        "mean_ssim": float(np.mean(structure)),
    }


def _explain_fn(method, params: dict | None) -> tuple[str, Callable]:
    if callable(method):
        return getattr(method, "__name__", "custom"), method
    from core.explain import explain

    def run(model, images, class_index):
        return explain(model, images, method, class_index=class_index, normalize=False, **(params or {}))

    return method, run


def _classes(model, images, class_index) -> list[int]:
    from core.models import predict_proba

    if class_index is None:
        return [int(c) for c in np.argmax(predict_proba(model, images), axis=1)]
    if np.ndim(class_index) == 0:
        return [int(class_index)] * len(images)
    return [int(c) for c in class_index]


# ----------------------------------------------------------------------------------------------
# The checks


def randomization_cascade(
    model,
    images,
    method,
    class_index=None,
    params: dict | None = None,
    seed: int = 0,
    max_stages: int = MAX_STAGES,
    threshold: float = SIMILARITY_THRESHOLD,
) -> dict:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) on a copy of ``model``.

    Args:
        model: the classifier (pixels 0-255 in, probabilities out); never changed.
        images: (N, H, W, 3) pixels 0-255.
        method: a name in `core.explain.METHODS`, or ``explain_fn(model, images, class_index) -> maps``.
        class_index: None (the original model's predicted classes, kept fixed), an int, or N ints.
        params: the method's parameters.
        seed: seeds the fresh initialisers.
        max_stages: at most this many randomised stages (evenly spaced cuts; the last randomises all).

    Returns:
        ``{"method", "classes", "stages": [{"stage", "randomized_layers", "top_layer", "spearman", "ssim",
        "mean_spearman", "mean_ssim"}], "maps": (S + 1, N, H, W) |maps| / max (the original first),
        "final_spearman", "final_ssim", "passed", "verdict", "threshold", "seed"}``.
    """
    images = np.asarray(images, np.float32)
    name, explain_fn = _explain_fn(method, params)
    classes = _classes(model, images, class_index)
    original = np.asarray(explain_fn(model, images, classes), np.float64)
    copy = model_copy(model)
    units = layer_units(copy)
    if not units:
        raise SanityError("The model has no layers with weights to randomise.")
    stages = [
        {
            "stage": 0,
            "randomized_layers": [],
            "top_layer": "original",
            **similarity(original, original),
        }
    ]
    maps = [_scaled(original)]
    done = 0
    for number, cut in enumerate(stage_cuts(len(units), max_stages), start=1):
        for unit in units[done:cut]:
            for layer in unit:
                reinitialise(layer, seed + number)
        done = cut
        randomized = np.asarray(explain_fn(copy, images, classes), np.float64)
        maps.append(_scaled(randomized))
        stages.append(
            {
                "stage": number,
                "randomized_layers": [layer.name for unit in units[:cut] for layer in unit],
                "top_layer": units[cut - 1][0].name,
                **similarity(original, randomized),
            }
        )
    final = stages[-1]
    passed = final["mean_spearman"] < threshold
    return {
        "method": name,
        "classes": classes,
        "stages": stages,
        "maps": np.stack(maps).astype(np.float32),
        "final_spearman": final["mean_spearman"],
        "final_ssim": final["mean_ssim"],
        "passed": bool(passed),
        "verdict": cascade_verdict(name, final["mean_spearman"], final["mean_ssim"], passed, threshold),
        "threshold": threshold,
        "seed": int(seed),
    }


def cascade_verdict(method: str, rank: float, structure: float, passed: bool, threshold: float) -> str:
    if passed:
        return (
            f"{method} passes: with every layer's weights random its maps change (Spearman {rank:.2f}, SSIM "
            f"{structure:.2f}; below {threshold} is expected), so they depend on what the model learned."
        )
    return (
        f"{method} fails: with every layer's weights random its maps stay similar (Spearman {rank:.2f}, SSIM "
        f"{structure:.2f}; at least {threshold}), so they show the image more than the model."
    )


def class_sensitivity(
    model,
    images,
    method,
    class_index=None,
    params: dict | None = None,
    seed: int = 0,
    threshold: float = SIMILARITY_THRESHOLD,
) -> dict:
    """The map for the explained class against the map for another class drawn at random (seeded).

    Returns ``{"method", "classes", "other_classes", "spearman", "ssim", "mean_spearman", "mean_ssim",
    "class_sensitive", "verdict", "threshold", "seed"}``."""
    from core.models import predict_proba

    images = np.asarray(images, np.float32)
    name, explain_fn = _explain_fn(method, params)
    classes = _classes(model, images, class_index)
    n_classes = predict_proba(model, images[:1]).shape[1]
    if n_classes < 2:
        raise SanityError(f"The class-sensitivity check needs at least 2 classes. Received {n_classes}")
    rng = np.random.default_rng(seed)
    others = [int((c + rng.integers(1, n_classes)) % n_classes) for c in classes]
    scores = similarity(explain_fn(model, images, classes), explain_fn(model, images, others))
    sensitive = scores["mean_spearman"] < threshold
    if sensitive:
        verdict = f"{name} is class-sensitive: maps for another class differ (Spearman {scores['mean_spearman']:.2f})."
    else:
        verdict = (
            f"{name} is not class-sensitive: maps for another class look the same (Spearman "
            f"{scores['mean_spearman']:.2f}, at least {threshold}); it cannot tell you why *this* class."
        )
    return {
        "method": name,
        "classes": classes,
        "other_classes": others,
        **scores,
        "class_sensitive": bool(sensitive),
        "verdict": verdict,
        "threshold": threshold,
        "seed": int(seed),
    }


def edge_detector(model, images, class_index) -> np.ndarray:
    """A test double that ignores the model: the Sobel gradient magnitude of the grey image."""
    from scipy import ndimage

    grey = np.asarray(images, np.float64).mean(axis=-1)
    return np.stack([np.hypot(ndimage.sobel(g, 0), ndimage.sobel(g, 1)) for g in grey]).astype(np.float32)
