"""tf.data input pipelines: file lists -> decoded, resized, augmented, batched pixels, with bounded memory.

    routes = plan_routes(paths)                      # which decoder reads each file (headers only)
    tracker = PassTracker(paths)                     # which files each pass delivered; the rest were skipped
    train = training_dataset(paths, labels, (64, 64), 32, routes=routes, tracker=tracker, shuffle=True,
                             augment=True, seed=0)   # (float32 pixels 0-255, int32 labels) batches
    for images in image_batches(paths, (64, 64), 64):  # evaluation, the audit: in order, every file or an error
        ...

Decoding runs in parallel (``num_parallel_calls=AUTOTUNE``). JPEG, PNG, BMP and GIF files that TensorFlow's
decoders read exactly as Pillow would (8-bit RGB, grey or palette without transparency, no EXIF rotation)
go through TensorFlow's decoders and an antialiased bilinear resize, rounded to whole grey levels: at most
one grey level away from `core.data.load_image`, identical when no resize is needed. Everything else (CMYK,
16-bit, alpha, TIFF, WebP, EXIF-rotated photos) goes through the project's safe Pillow decoder
(`core.data.load_image`) inside ``tf.numpy_function``, also in parallel (Pillow releases the GIL while it
decodes). `image_batches` decodes every file with Pillow, so evaluation sees exactly the pixels the
Explainer page sees.

Nothing holds a split: the list of paths is the only thing of the split's size; decoded images live in
the prefetch and shuffle buffers (a few batches) or, with ``cache_dir``, in an on-disk cache of decoded,
resized images per (file list, size). A file that cannot be read any more (deleted, changed, corrupt since
the scan) is dropped from its batch and counted by the `PassTracker`; training never stops for it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from core import data as data_lib

ROUTE_PILLOW, ROUTE_JPEG, ROUTE_TF = 0, 1, 2  # the decoder of a file: Pillow, tf.io.decode_jpeg, tf.io.decode_image
CACHE_VERSION = "1"  # bump when decoding changes: old caches are then never read
SHUFFLE_BUFFER_BYTES = 256 * 2**20  # decoded images a cached pipeline's shuffle buffer may hold
AUTOTUNE = tf.data.AUTOTUNE
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------------------
# Which decoder reads a file


def decode_route(path) -> int:
    """`ROUTE_JPEG` or `ROUTE_TF` when TensorFlow's decoders give the pixels Pillow gives, else
    `ROUTE_PILLOW` (also for anything that cannot be opened: the Pillow route then reports why)."""
    try:
        with Image.open(path) as image:
            fmt, mode, info = image.format, image.mode, image.info
            rotated = fmt in ("JPEG", "MPO") and image.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
    except Exception:
        return ROUTE_PILLOW
    transparent = "transparency" in info or mode in ("RGBA", "LA", "PA")
    if fmt == "JPEG" and mode in ("RGB", "L") and not rotated:
        return ROUTE_JPEG
    if fmt in ("PNG", "GIF") and mode in ("RGB", "L", "P") and not transparent and "exif" not in info:
        return ROUTE_TF
    if fmt == "BMP" and mode == "RGB":
        return ROUTE_TF
    return ROUTE_PILLOW


def plan_routes(paths: Sequence[str], workers: int = 8, cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """`decode_route` of every path (int8), reading headers only, in threads; stops early (the rest
    `ROUTE_PILLOW`) when ``cancelled()`` turns true."""
    routes = np.zeros(len(paths), np.int8)
    chunk = 512
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), chunk):
            if cancelled is not None and cancelled():
                break
            routes[start : start + chunk] = list(pool.map(decode_route, paths[start : start + chunk]))
    return routes


# ---------------------------------------------------------------------------------------------------
# Counting what a pass delivered


class PassTracker:
    """Which of the listed files one pass over a dataset delivered; the others were skipped (unreadable).

    The pipeline calls `seen` with each batch's indices and `failed` with the Pillow decoder's reasons;
    `end_pass` closes a pass (an epoch) and returns the files it skipped, with the reason when known.
    """

    def __init__(self, paths: Sequence[str]):
        self.paths = [str(p) for p in paths]
        self._seen = np.zeros(len(self.paths), bool)
        self._reasons: dict[int, str] = {}
        self._lock = threading.Lock()
        self.skipped_per_pass: list[int] = []
        self.skipped: dict[str, str] = {}  # every file skipped in any pass, with its reason

    def seen(self, indices: np.ndarray) -> np.int64:
        with self._lock:
            self._seen[np.asarray(indices, dtype=np.int64)] = True
        return np.int64(len(indices))

    def failed(self, index: int, reason: str) -> None:
        with self._lock:
            self._reasons[int(index)] = reason

    def delivered(self) -> int:
        """Files delivered so far in the current pass."""
        return int(self._seen.sum())

    def end_pass(self) -> list[tuple[str, str]]:
        """Closes the current pass: the files it did not deliver, each with the reason."""
        with self._lock:
            missing = np.flatnonzero(~self._seen)
            skipped = [(self.paths[i], self._reason(i)) for i in missing]
            self._seen[:] = False
            self._reasons.clear()
        self.skipped_per_pass.append(len(skipped))
        for path, reason in skipped:  # the first reason found is the most precise (the decoder's own)
            self.skipped.setdefault(path, reason)
        return skipped

    def _reason(self, index: int) -> str:
        if index in self._reasons:
            return self._reasons[index]
        if not os.path.exists(self.paths[index]):
            return "the file was deleted after the scan"
        return "TensorFlow could not decode it (changed or corrupt after the scan)"

    def summary(self) -> dict:
        """For run.json: the most files one pass skipped, and up to 10 of them with the reason."""
        return {
            "skipped_files": max(self.skipped_per_pass, default=0),
            "examples": [{"path": p, "reason": r} for p, r in list(self.skipped.items())[:10]],
        }


# ---------------------------------------------------------------------------------------------------
# Decoding


def _pillow_decoder(size: tuple[int, int], tracker: PassTracker | None):
    height, width = size

    def decode(path: bytes, index: np.int64):
        try:
            return data_lib.load_image(path.decode("utf-8"), (height, width)), np.True_
        except (data_lib.ImageError, OSError) as exc:
            if tracker is not None:
                tracker.failed(int(index), str(exc))
            return np.zeros((height, width, 3), np.uint8), np.False_

    return decode


def _decode_fn(size: tuple[int, int], tracker: PassTracker | None):
    """(path, label, route, index) -> (uint8 image (H, W, 3), label, index, ok)."""
    pillow = _pillow_decoder(size, tracker)
    height, width = size

    def with_tensorflow(path, route):
        raw = tf.io.read_file(path)
        image = tf.cond(
            route == ROUTE_JPEG,
            lambda: tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(raw, channels=3, expand_animations=False),
        )
        same = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
        resized = tf.cond(
            same,
            lambda: tf.cast(image, tf.float32),
            lambda: tf.round(tf.image.resize(tf.cast(image, tf.float32), size, antialias=True)),
        )
        return tf.cast(tf.clip_by_value(resized, 0.0, 255.0), tf.uint8), tf.constant(True)

    def with_pillow(path, index):
        image, ok = tf.numpy_function(pillow, [path, index], [tf.uint8, tf.bool], stateful=False)
        return image, ok

    def decode(path, label, route, index):
        image, ok = tf.cond(
            route == ROUTE_PILLOW, lambda: with_pillow(path, index), lambda: with_tensorflow(path, route)
        )
        image = tf.ensure_shape(image, (height, width, 3))
        return image, label, index, tf.ensure_shape(ok, ())

    return decode


def decoded_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | None,
    size: tuple[int, int],
    routes: np.ndarray | None = None,
    tracker: PassTracker | None = None,
    order: np.ndarray | None = None,
) -> tf.data.Dataset:
    """(uint8 image, int32 label, int64 index) per readable file, in list order (or ``order``); files
    that cannot be read are dropped (TensorFlow's decoders: ``ignore_errors``; Pillow's: a flag)."""
    paths = [str(p) for p in paths]
    labels = np.zeros(len(paths), np.int32) if labels is None else np.asarray(labels, np.int32)
    routes = np.full(len(paths), ROUTE_PILLOW, np.int8) if routes is None else np.asarray(routes, np.int8)
    indices = np.arange(len(paths), dtype=np.int64) if order is None else np.asarray(order, np.int64)
    table = (np.asarray(paths, dtype=object)[indices].astype(str), labels[indices], routes[indices], indices)
    dataset = tf.data.Dataset.from_tensor_slices(table)
    return _decoded(dataset, tuple(size), tracker)


def _decoded(listing: tf.data.Dataset, size: tuple[int, int], tracker: PassTracker | None) -> tf.data.Dataset:
    dataset = listing.map(_decode_fn(size, tracker), num_parallel_calls=AUTOTUNE).ignore_errors()
    return dataset.filter(_is_ok).map(_without_flag)


def _is_ok(image, label, index, ok):
    return ok


def _without_flag(image, label, index, ok):
    return image, label, index


def _as_float(images, labels, indices):
    return tf.cast(images, tf.float32), labels


# ---------------------------------------------------------------------------------------------------
# Augmentation: batched tensor ops


def augment_batch(images: tf.Tensor, seed: tf.Tensor, min_scale: float = 0.8) -> tf.Tensor:
    """Random horizontal flip and a random crop of ``min_scale``-100% of each side resized back (zoom), per
    image of a float batch (N, H, W, 3), in one ``crop_and_resize`` (a box whose left edge lies right of
    its right edge samples the crop mirrored); ``seed`` is a stateless seed (2 integers)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    shape = tf.shape(images)
    n = shape[0]
    flip = tf.random.stateless_uniform([n], seeds[0]) < 0.5
    scale = tf.random.stateless_uniform([n], seeds[1], minval=min_scale, maxval=1.0)
    top = tf.random.stateless_uniform([n], seeds[2]) * (1.0 - scale)
    left = tf.random.stateless_uniform([n], seeds[3]) * (1.0 - scale)
    x1, x2 = tf.where(flip, left + scale, left), tf.where(flip, left, left + scale)
    boxes = tf.stack([top, x1, top + scale, x2], axis=1)
    crops = tf.image.crop_and_resize(images, boxes, tf.range(n), shape[1:3], method="bilinear")
    return tf.clip_by_value(crops, 0.0, 255.0)


# ---------------------------------------------------------------------------------------------------
# Training and validation batches


def cache_prefix(cache_dir: str | os.PathLike, paths: Sequence[str], size: tuple[int, int], routes) -> Path:
    """The cache file prefix for these files at this size: keyed on every path, size in bytes and
    modification time, so a changed, added or removed file gives a new cache."""
    digest = hashlib.sha1(f"{CACHE_VERSION}\0{size[0]}x{size[1]}\n".encode())
    for path, route in zip(paths, routes):
        try:
            info = os.stat(path)
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{route}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return Path(cache_dir) / f"decoded-{size[0]}x{size[1]}-{digest.hexdigest()[:16]}"


def cache_exists(prefix: Path) -> bool:
    return Path(f"{prefix}.index").exists()


def build_cache(
    paths: Sequence[str],
    labels: Sequence[int],
    size: tuple[int, int],
    routes: np.ndarray,
    prefix: Path,
    tracker: PassTracker | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> bool:
    """Decodes every file once into the on-disk cache at ``prefix`` (files in a fixed pseudo-random
    order, so that a shuffle buffer after the cache mixes classes). Written under a temporary name and
    renamed when complete; False (nothing left behind) when ``cancelled()`` turned true."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    temporary = prefix.with_name(f".{prefix.name}.tmp-{os.getpid()}")
    order = cache_order(paths)
    dataset = decoded_dataset(paths, labels, size, routes, tracker, order=order).cache(str(temporary))
    complete = True
    for number, (_, _, index) in enumerate(dataset.as_numpy_iterator()):
        if tracker is not None:  # delivered: the files this pass does not deliver are the skipped ones
            tracker.seen(np.array([index]))
        if cancelled is not None and number % 64 == 0 and cancelled():
            complete = False
            break
    written = list(prefix.parent.glob(f"{temporary.name}*"))
    if complete:
        for file in written:
            file.replace(prefix.parent / file.name.replace(temporary.name, prefix.name, 1))
    else:
        for file in written:
            file.unlink(missing_ok=True)
    return complete


def cache_order(paths: Sequence[str]) -> np.ndarray:
    """A fixed pseudo-random order of a file list (by a hash of each path), the same on every machine."""
    keys = [hashlib.sha1(str(p).encode()).digest()[:8] for p in paths]
    return np.asarray(sorted(range(len(paths)), key=keys.__getitem__), dtype=np.int64)


def training_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    size: tuple[int, int],
    batch_size: int,
    *,
    routes: np.ndarray | None = None,
    tracker: PassTracker | None = None,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    cache: Path | None = None,
    shard: tuple[int, int] | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 pixels 0-255 (N, H, W, 3), int32 labels) for ``fit`` or a custom loop.

    Args:
        paths, labels: the split's files and their class indices.
        size: (height, width) of the model input.
        batch_size: images per batch (the global batch under `MirroredStrategy`; per worker in a
            multi-worker loop).
        routes: `plan_routes(paths)` (default: every file through Pillow).
        tracker: counts what each pass delivered (a batch reports its files to it).
        shuffle: a new order every pass (seeded); the file list is shuffled before decoding.
        augment: `augment_batch` on every batch, seeded by ``seed`` and the pass.
        cache: an on-disk cache prefix written by `build_cache`: decoding is skipped, the cached images
            are shuffled in a bounded buffer.
        shard: (number of shards, this shard): this worker's share of the files.
        repeat: endless (a custom loop takes a fixed number of steps per epoch).
        drop_remainder: only full batches.
    """
    size = tuple(size)
    n = len(paths)
    if cache is not None and cache_exists(cache):
        dataset = decoded_dataset(paths, labels, size, routes, tracker, order=cache_order(paths)).cache(str(cache))
        if shard is not None:
            dataset = dataset.shard(*shard)
        if shuffle:
            image_bytes = size[0] * size[1] * 3
            buffer = int(min(n, max(4 * batch_size, SHUFFLE_BUFFER_BYTES // image_bytes)))
            dataset = dataset.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    else:
        labels = np.asarray(labels, np.int32)
        routes = np.full(n, ROUTE_PILLOW, np.int8) if routes is None else np.asarray(routes, np.int8)
        table = (np.asarray([str(p) for p in paths]), labels, routes, np.arange(n, dtype=np.int64))
        listing = tf.data.Dataset.from_tensor_slices(table)
        if shard is not None:
            listing = listing.shard(*shard)
        if shuffle:  # file names only: a full shuffle costs no image memory
            listing = listing.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
        dataset = _decoded(listing, size, tracker)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if tracker is not None:
        dataset = dataset.map(_reporting(tracker))
    dataset = dataset.map(_as_float)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(_augmented, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def _augmented(batch, seed):
    return augment_batch(batch[0], seed), batch[1]


def _reporting(tracker: PassTracker):
    def report(images, labels, indices):
        count = tf.numpy_function(tracker.seen, [indices], tf.int64)
        with tf.control_dependencies([count]):
            return tf.identity(images), labels, indices

    return report


# ---------------------------------------------------------------------------------------------------
# Evaluation, the audit, batch explanations: every file, in order


def image_batches(paths: Sequence[str], size: tuple[int, int], batch_size: int = 64) -> Iterator[np.ndarray]:
    """float32 batches (N, H, W, 3) of every file in order, decoded with `core.data.load_image` in
    parallel (the pixels the Explainer page sees), the next batches prefetched.

    Raises:
        ImageError: a file cannot be read; the message starts with its path (also in ``.path``, and the
            reason alone in ``.reason``).
    """
    paths = [str(p) for p in paths]
    if not paths:
        return
    tracker = PassTracker(paths)
    decode = _decode_fn(tuple(size), tracker)
    listing = tf.data.Dataset.from_tensor_slices(
        (paths, np.zeros(len(paths), np.int32), np.zeros(len(paths), np.int8), np.arange(len(paths), dtype=np.int64))
    )
    dataset = listing.map(decode, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(2)
    for images, _, indices, ok in dataset.as_numpy_iterator():
        if not ok.all():
            index = int(indices[np.flatnonzero(~ok)[0]])
            error = data_lib.ImageError(f"{paths[index]}: {tracker._reason(index)}")
            error.path, error.reason = paths[index], tracker._reason(index)
            raise error
        yield images.astype(np.float32)


def split_batches(run, split: str = "test", batch_size: int = 32, size: tuple[int, int] | None = None):
    """Yields (rows, images, labels) over a run's recorded split (``splits.csv``): ``rows`` the split's
    rows of this batch, ``images`` float32 pixels at the run's input size, ``labels`` the class indices in
    the run's class order. For the audit and batch explanations over large test sets.

    Raises:
        RunError: the run has no recorded splits or no such split. ImageError: a file cannot be read.
    """
    import pandas as pd

    from core import runs
    from core.finishing import SPLITS_FILE

    if split not in data_lib.SPLITS:
        raise ValueError(f"Expected split to be one of {list(data_lib.SPLITS)}. Received: split={split!r}")
    try:
        frame = pd.read_csv(run.file(SPLITS_FILE), dtype={"path": str, "split": str, "class_name": str})
    except (OSError, ValueError) as exc:
        raise runs.RunError(f"Run {run.id} has no readable {SPLITS_FILE}: {exc}") from exc
    rows = frame[frame["split"] == split].reset_index(drop=True)
    size = tuple(size or run.meta.get("input_size") or ())
    if len(size) != 2:
        raise runs.RunError(f"Run {run.id} records no input_size; pass size=(height, width).")
    order = {name: i for i, name in enumerate(run.class_names)}
    labels = np.asarray([order.get(c, -1) for c in rows["class_name"]], np.int32)
    start = 0
    for images in image_batches(list(rows["path"]), size, batch_size):
        end = start + len(images)
        yield rows.iloc[start:end], images, labels[start:end]
        start = end
