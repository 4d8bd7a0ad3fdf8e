"""Speed of the trust tools against their floors (``python -m core bench --trust``; also
``python -m core.bench_trust``).

1. Deletion + insertion of one map with K steps (`core.trust.deletion_insertion`: 2 (K + 1) images, K + 1
   per curve) against the floor: the same 2 (K + 1) images through the same model, batched and compiled,
   doing nothing else.
2. The audit's explanation pass over a test set (Grad-CAM on images decoded ahead from PNG files,
   `core.audit.batches_ahead`) against plain compiled inference of the same model at the same batch size
   over the same files, decoded the same way: the ratio of throughputs.

Both for EfficientNetB0 at 224 px (random weights: speed does not depend on them) and the demo's compact CNN
at 64 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {"demo": ("compact_cnn", 64), "efficientnetb0": ("efficientnetb0", 224)}


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up: tracing and first allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _forward_floor(model, height: int, width: int, batch_size: int):
    """A compiled ``images -> sum of probabilities``, ``batch_size`` images per forward pass."""
    import tensorflow as tf

    def floor(images):
        total = tf.shape(images)[0]

        def body(start, acc):
            x = images[start : tf.minimum(start + batch_size, total)]
            return start + batch_size, acc + tf.reduce_sum(model(x, training=False))

        return tf.while_loop(lambda start, _: start < total, body, (tf.constant(0), tf.constant(0.0)))[1]

    return tf.function(floor, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)], autograph=False)


def deletion_insertion_ratio(model, steps: int = 20, batch_size: int = 64, repeats: int = 5, seed: int = 0) -> dict:
    """Seconds of one `deletion_insertion` call and of its floor, and their ratio."""
    import tensorflow as tf

    from core.models import input_size
    from core.trust import deletion_insertion

    height, width = input_size(model)
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    saliency = rng.random((height, width)).astype(np.float32)
    seconds = _median_seconds(
        lambda: deletion_insertion(model, image, saliency, 0, steps=steps, batch_size=batch_size), repeats
    )
    floor = _forward_floor(model, height, width, batch_size)
    batch = tf.constant(np.repeat(image[None], 2 * (steps + 1), axis=0))
    floor_seconds = _median_seconds(lambda: float(floor(batch)), repeats)
    return {
        "seconds": seconds,
        "floor_seconds": floor_seconds,
        "ratio": seconds / floor_seconds,
        "images": 2 * (steps + 1),
    }


def audit_throughput_ratio(model, images: int = 64, batch_size: int = 32, repeats: int = 2, seed: int = 0) -> dict:
    """Images per second of the audit's Grad-CAM pass and of plain compiled inference over the same PNG files."""
    import tensorflow as tf
    from PIL import Image

    from core.audit import batches_ahead
    from core.explain import explain
    from core.models import input_size

    height, width = input_size(model)
    rng = np.random.default_rng(seed)
    predict = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        autograph=False,
    )
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as folder:
        paths = []
        for i in range(images):
            path = Path(folder) / f"{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))

        def inference():
            for _, batch in batches_ahead(paths, (height, width), batch_size):
                predict(tf.constant(batch)).numpy()

        def gradcam():
            for _, batch in batches_ahead(paths, (height, width), batch_size):
                explain(model, batch, "gradcam", class_index=0)

        inference_seconds = _median_seconds(inference, repeats)
        gradcam_seconds = _median_seconds(gradcam, repeats)
    return {
        "inference_images_per_second": images / inference_seconds,
        "gradcam_images_per_second": images / gradcam_seconds,
        "ratio": inference_seconds / gradcam_seconds,
        "images": images,
        "batch_size": batch_size,
    }


def bench_trust(models=tuple(MODELS), steps: int = 20, images: int = 64, batch_size: int = 32, repeats: int = 3):
    """Both ratios per model; prints a table and returns its rows."""
    from core.models import build_model
    from core.system import device_in_use

    rows = []
    for name in models:
        arch, size = MODELS[name]
        model = build_model(arch, 3, size)
        curves = deletion_insertion_ratio(model, steps, batch_size=64, repeats=repeats)
        audit = audit_throughput_ratio(model, images, batch_size, repeats=max(1, repeats - 1))
        rows.append({"model": f"{arch} {size}px", **{f"curves_{k}": v for k, v in curves.items()}, **audit})
    print(f"Trust tools vs their floors ({device_in_use()}; K = {steps}, {images} images, batch {batch_size})")
    print(
        f"{'model':22s} {'del+ins s':>10s} {'floor s':>9s} {'ratio':>6s} (target <= 1.2)   "
        f"{'Grad-CAM img/s':>14s} {'inference img/s':>15s} {'ratio':>6s} (target >= 0.7)"
    )
    for row in rows:
        print(
            f"{row['model']:22s} {row['curves_seconds']:10.4f} {row['curves_floor_seconds']:9.4f} "
            f"{row['curves_ratio']:6.2f}                  {row['gradcam_images_per_second']:14.1f} "
            f"{row['inference_images_per_second']:15.1f} {row['ratio']:6.2f}"
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.bench_trust", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, among {list(MODELS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"error: unknown model(s) {unknown}; expected some of {list(MODELS)}", file=sys.stderr)
        return 2
    bench_trust(models, args.steps, args.images, args.batch_size, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
