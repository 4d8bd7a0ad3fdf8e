"""The feature space of a run: penultimate-layer features of its test split (plus a seeded sample of its
training split), projected to 2-D with PCA and t-SNE, cached on disk with the run.

    result = compute_embeddings(run, train_sample=200)     # computed once, then read from the cache
    result.frame      # one row per image: path, split, true_class, pred_class, confidence, correct,
                      #                    pca_x, pca_y, tsne_x, tsne_y
    result.features   # (n, d) float32, the input of the model's last Dense layer (see core.penultimate)
    result.info       # layer, dimensions, counts, skipped files, timings, cached, seconds

On disk, in ``<run>/embeddings/``: ``features.npy``, ``frame.csv`` and ``info.json``, each written
atomically; ``info.json`` is written last and holds the SHA-256 of the other two, so a half-replaced set
is never read as valid. The cache is keyed by the model file's modification time and size (a retrained
or re-imported model computes again), the train sample size, the seed, the perplexity and the recorded
splits.

Projections: `core.projection` (PCA on the raw features; t-SNE seeded, perplexity clipped to n - 1).
Features: `core.penultimate` (the input of the last Dense layer). Reading the cache imports neither
TensorFlow nor scikit-learn.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import runs
from core.projection import DEFAULT_PERPLEXITY, MIN_POINTS, project_pca, project_tsne

FOLDER = "embeddings"
FEATURES_FILE = "features.npy"
FRAME_FILE = "frame.csv"
INFO_FILE = "info.json"
FORMAT_VERSION = 1
FRAME_COLUMNS = (
    "path",
    "split",
    "true_class",
    "pred_class",
    "confidence",
    "correct",
    "pca_x",
    "pca_y",
    "tsne_x",
    "tsne_y",
)
PROJECTIONS = {"tsne": ("tsne_x", "tsne_y"), "pca": ("pca_x", "pca_y")}
DEFAULT_TRAIN_SAMPLE = 200
MIN_IMAGES = MIN_POINTS
_TEXT_COLUMNS = {"path": str, "split": str, "true_class": str, "pred_class": str}


class EmbeddingError(ValueError):
    """The feature space of a run cannot be computed; the message says why and what to do."""


@dataclass(frozen=True)
class Embeddings:
    """A run's feature space: `frame` (one row per image, `FRAME_COLUMNS`), `features` (n, d) float32 in the
    frame's row order, and `info` (see `compute_embeddings`)."""

    frame: pd.DataFrame
    features: np.ndarray
    info: dict


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------


def cache_paths(run: runs.Run) -> tuple[Path, Path, Path]:
    """(features.npy, frame.csv, info.json) of a run."""
    folder = run.path / FOLDER
    return folder / FEATURES_FILE, folder / FRAME_FILE, folder / INFO_FILE


def cache_stamp(run: runs.Run) -> list[int] | None:
    """[modification time in ns, size] of the cache's info.json (None: nothing cached): changes whenever the
    cache is written, so a loader keyed by it reads a new cache at once."""
    try:
        stat = cache_paths(run)[2].stat()
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def _splits_stamp(run: runs.Run) -> list[int] | None:
    try:
        stat = run.file("splits.csv").stat()
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def cache_key(
    run: runs.Run, train_sample: int = DEFAULT_TRAIN_SAMPLE, seed: int = 0, perplexity: float = DEFAULT_PERPLEXITY
) -> dict:
    """What a cached result must have been computed from to be used."""
    return {
        "version": FORMAT_VERSION,
        "model": list(run.model_stamp or ()) or None,
        "splits": _splits_stamp(run),
        "train_sample": int(train_sample),
        "seed": int(seed),
        "perplexity": float(perplexity),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_cached(
    run: runs.Run, train_sample: int = DEFAULT_TRAIN_SAMPLE, seed: int = 0, perplexity: float = DEFAULT_PERPLEXITY
) -> Embeddings | None:
    """The cached feature space if it is complete and was computed from the run's current model with these
    settings; else None. ``info["cached"]`` is True and ``info["seconds"]`` the time to read it."""
    started = time.perf_counter()
    features_path, frame_path, info_path = cache_paths(run)
    try:
        info = json.loads(info_path.read_text("utf-8"))
        if not isinstance(info, dict) or info.get("key") != cache_key(run, train_sample, seed, perplexity):
            return None
        features_bytes, frame_bytes = features_path.read_bytes(), frame_path.read_bytes()
        files = info.get("files") or {}
        if files.get(FEATURES_FILE) != _sha256(features_bytes) or files.get(FRAME_FILE) != _sha256(frame_bytes):
            return None
        features = np.load(io.BytesIO(features_bytes), allow_pickle=False)
        frame = pd.read_csv(io.BytesIO(frame_bytes), dtype=_TEXT_COLUMNS, keep_default_na=False)
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError):
        return None
    if list(frame.columns) != list(FRAME_COLUMNS) or features.ndim != 2 or len(features) != len(frame):
        return None
    frame["correct"] = frame["correct"].astype(str).str.lower() == "true"
    info.update(cached=True, seconds=time.perf_counter() - started)
    return Embeddings(frame, features.astype(np.float32, copy=False), info)


def _write_cache(run: runs.Run, frame: pd.DataFrame, features: np.ndarray, info: dict) -> dict:
    """Writes the three files (info.json last, with the digests of the others); returns the stored info."""
    features_path, frame_path, info_path = cache_paths(run)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
    features_bytes = buffer.getvalue()
    frame_bytes = frame.to_csv(index=False).encode("utf-8")
    stored = {**info, "files": {FEATURES_FILE: _sha256(features_bytes), FRAME_FILE: _sha256(frame_bytes)}}
    runs.atomic_write_bytes(features_path, features_bytes)
    runs.atomic_write_bytes(frame_path, frame_bytes)
    runs.atomic_write_json(info_path, stored)
    return stored


# ----------------------------------------------------------------------------------------------
# The images
# ----------------------------------------------------------------------------------------------


def images_of(run: runs.Run, train_sample: int = DEFAULT_TRAIN_SAMPLE, seed: int = 0) -> pd.DataFrame:
    """The images to embed, (path, split, true_class): the whole test split, then a seeded sample of
    ``train_sample`` training images (all of them when there are fewer; none for a run without recorded
    splits).

    Raises:
        EmbeddingError: the run has no test split.
        RunError: its splits.csv cannot be read.
    """
    from core.finishing import SPLITS_FILE, test_split_of

    if int(train_sample) < 0:
        raise EmbeddingError(f"Expected a train sample of 0 images or more. Received: train_sample={train_sample}")
    test = test_split_of(run)
    if not len(test):
        raise EmbeddingError(
            f"Run {run.id} has no test split: its {SPLITS_FILE} records no test image. Train or import the "
            "model again on a dataset with a test split."
        )
    parts = [test.assign(split="test")]
    if train_sample and run.file(SPLITS_FILE).exists():
        splits = pd.read_csv(
            run.file(SPLITS_FILE), dtype={"path": str, "split": str, "class_name": str}, keep_default_na=False
        )
        train = splits[splits["split"] == "train"].reset_index(drop=True)
        if len(train) > train_sample:
            rng = np.random.default_rng(seed)
            train = train.iloc[np.sort(rng.choice(len(train), size=int(train_sample), replace=False))]
        parts.append(train.assign(split="train"))
    chosen = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(
        {"path": chosen["path"].astype(str), "split": chosen["split"], "true_class": chosen["class_name"].astype(str)}
    )


# ----------------------------------------------------------------------------------------------
# Computing
# ----------------------------------------------------------------------------------------------


def compute_embeddings(
    run: runs.Run,
    train_sample: int = DEFAULT_TRAIN_SAMPLE,
    force: bool = False,
    *,
    model=None,
    seed: int = 0,
    perplexity: float = DEFAULT_PERPLEXITY,
    batch_size: int = 32,
    progress: Callable[[str, float], None] | None = None,
) -> Embeddings:
    """The run's feature space, read from the cache when it is valid, else computed and cached.

    Args:
        run: a run with a model and a recorded test split.
        train_sample: training images added to the test split (a seeded sample; 0: none).
        force: compute again even when a valid cache exists.
        model: the run's Keras model if already loaded (else it is loaded from the run folder).
        seed: seeds the train sample, PCA and t-SNE.
        perplexity: t-SNE's perplexity (clipped to n - 1).
        batch_size: images in memory per forward pass.
        progress: called with (stage, fraction done), stage one of "features", "pca", "tsne".

    Returns:
        `Embeddings`. ``info`` holds ``layer`` (where the features are read), ``layer_description``,
        ``dimensions`` (d), ``pooled`` (spatial axes averaged), ``n_images``, ``n_test``, ``n_train``,
        ``missing`` and ``unreadable`` (files skipped, with ``*_examples``), ``pca_explained_variance``,
        ``tsne`` (perplexity, input dimensions, init), ``timings`` (seconds: model (importing TensorFlow, reading
        the splits and loading the model when not given), features, pca, tsne, total),
        ``cached`` and ``seconds`` (this call).

    Raises:
        EmbeddingError: no model, no test split, fewer than `MIN_IMAGES` readable images, or a model whose
            penultimate layer cannot be read (an imported SavedModel); the message says which.
        RunError: the run's splits or class names cannot be used.
    """
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    if run.model_stamp is None:
        raise EmbeddingError(
            f"Run {run.id} has no model ({runs.MODEL_FILE} is missing; status: {run.status}). Train or import a "
            "model first."
        )
    if not force:
        cached = load_cached(run, train_sample, seed, perplexity)
        if cached is not None:
            return cached
    key = cache_key(run, train_sample, seed, perplexity)
    tick = time.perf_counter()
    from core import penultimate  # TensorFlow is imported here, once per process
    from core.finishing import check_class_names
    from core.model_import import load_run_model

    points = images_of(run, train_sample, seed)
    if model is None:
        model = load_run_model(run.path)
    model_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    try:
        layer = penultimate.feature_layer(model)
    except penultimate.FeatureError as exc:
        raise EmbeddingError(f"Run {run.id}: {exc}") from exc
    extracted = penultimate.extract_features(
        model,
        list(points["path"]),
        batch_size=batch_size,
        layer=layer,
        progress=lambda done, total: report("features", done / max(total, 1)),
    )
    features_seconds = time.perf_counter() - tick
    kept = points.iloc[extracted.kept].reset_index(drop=True)
    skipped = _skipped_text(extracted)
    if len(kept) < MIN_IMAGES:
        raise EmbeddingError(
            f"Run {run.id}: expected at least {MIN_IMAGES} readable images to project. Received: {len(kept)} of "
            f"{len(points)}{skipped}. Restore the dataset, or train or import the model again on it as it is now."
        )
    class_names = check_class_names(run, int(extracted.probabilities.shape[1]))

    report("pca", 0.0)
    tick = time.perf_counter()
    pca, explained = project_pca(extracted.features, seed)
    pca_seconds = time.perf_counter() - tick
    report("tsne", 0.0)
    tick = time.perf_counter()
    tsne, tsne_settings = project_tsne(extracted.features, seed, perplexity)
    tsne_seconds = time.perf_counter() - tick

    predicted = extracted.probabilities.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "path": kept["path"],
            "split": kept["split"],
            "true_class": kept["true_class"],
            "pred_class": [class_names[i] for i in predicted],
            "confidence": extracted.probabilities.max(axis=1).astype(np.float64),
            "correct": kept["true_class"].to_numpy() == np.asarray([class_names[i] for i in predicted]),
            "pca_x": pca[:, 0],
            "pca_y": pca[:, 1],
            "tsne_x": tsne[:, 0],
            "tsne_y": tsne[:, 1],
        },
        columns=list(FRAME_COLUMNS),
    )
    total = time.perf_counter() - started
    info = {
        "key": key,
        "run": run.id,
        "created_at": runs.utc_now(),
        "layer": layer.name,
        "layer_description": layer.description,
        "dimensions": int(extracted.features.shape[1]),
        "pooled": extracted.pooled,
        "classes": class_names,
        "n_images": len(frame),
        "n_test": int((frame["split"] == "test").sum()),
        "n_train": int((frame["split"] == "train").sum()),
        "train_sample": int(train_sample),
        "seed": int(seed),
        "missing": len(extracted.missing),
        "missing_examples": extracted.missing[:5],
        "unreadable": len(extracted.unreadable),
        "unreadable_examples": [f"{path}: {reason}" for path, reason in extracted.unreadable[:5]],
        "pca_explained_variance": explained,
        "tsne": tsne_settings,
        "timings": {
            "model": round(model_seconds, 3),
            "features": round(features_seconds, 3),
            "pca": round(pca_seconds, 3),
            "tsne": round(tsne_seconds, 3),
            "total": round(total, 3),
        },
    }
    try:
        info = _write_cache(run, frame, extracted.features, info)
    except OSError as exc:  # a read-only run folder: the result is still good, only not kept
        info["cache_error"] = f"The result could not be cached in {cache_paths(run)[0].parent}: {exc}"
    report("tsne", 1.0)
    return Embeddings(frame, extracted.features, {**info, "cached": False, "seconds": time.perf_counter() - started})


def _skipped_text(extracted) -> str:
    parts = []
    if extracted.missing:
        parts.append(f"{len(extracted.missing)} no longer exist (e.g. {extracted.missing[0]})")
    if extracted.unreadable:
        path, reason = extracted.unreadable[0]
        parts.append(f"{len(extracted.unreadable)} cannot be read (e.g. {path}: {reason})")
    return f"; {' and '.join(parts)}" if parts else ""


def summary(info: dict) -> str:
    """One line about a result: images, where the features come from, skipped files, cache and timings."""
    timings = info.get("timings") or {}
    skipped = [f"{info[k]} {k}" for k in ("missing", "unreadable") if info.get(k)]
    computed = (
        f"computed in {timings.get('total', 0):.1f} s (model {timings.get('model', 0):.1f} s, features "
        f"{timings.get('features', 0):.1f} s, PCA {timings.get('pca', 0):.2f} s, t-SNE {timings.get('tsne', 0):.1f} s)"
    )
    return (
        f"{info.get('n_images', 0)} images ({info.get('n_test', 0)} test, {info.get('n_train', 0)} train) · "
        f"{info.get('dimensions', '?')} features from `{info.get('layer', '?')}`"
        + (f" · skipped: {', '.join(skipped)}" if skipped else "")
        + f" · {computed}"
        + (f", read from the cache in {info.get('seconds', 0):.2f} s" if info.get("cached") else "")
    )
