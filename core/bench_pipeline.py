"""Speed of the tf.data input pipeline (``python -m core bench --pipeline``; also ``python -m core.bench_pipeline``).

1. Images per second of the pipeline alone: files listed, decoded, resized, augmented, batched
   (`core.pipeline.training_dataset`), nothing else running.
2. Training steps per second of ``Model.fit`` fed by the real pipeline, by the pipeline reading its on-disk
   cache (``--cache``), and by the same batches already in memory, interleaved round by round (so that a
   slower or busier moment of the machine hits every variant alike); the ratios pipeline / memory say
   whether the loader or the model sets the pace (the goal: 0.9 or more).

For compact_cnn at 64 px (PNG files of 96 px, like the demo's) and EfficientNetB0 at 224 px (JPEG photos
of 320x240, random weights: speed does not depend on them). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {
    "compact_cnn": {"arch": "compact_cnn", "size": 64, "file": (96, 96), "format": "PNG", "batch": 32},
    "efficientnetb0": {"arch": "efficientnetb0", "size": 224, "file": (320, 240), "format": "JPEG", "batch": 16},
}


def make_images(folder: Path, count: int, file_size: tuple[int, int], fmt: str, classes: int = 3, seed: int = 0):
    """``count`` smooth random images (gradients and blobs, so that they compress like photos) in
    ``classes`` class folders; returns (paths, labels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = file_size
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    paths, labels = [], []
    for i in range(count):
        label = i % classes
        base = rng.uniform(0, 255, 3) * (1 - xx[..., None]) + rng.uniform(0, 255, 3) * yy[..., None]
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
        image = np.where(blob, rng.uniform(0, 255, 3), base) + rng.normal(0, 4, (height, width, 3))
        path = folder / str(label) / f"{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, fmt)
        paths.append(str(path))
        labels.append(label)
    return paths, labels


def pipeline_images_per_second(paths, labels, size, batch_size: int, passes: int = 2) -> float:
    """Images per second of `training_dataset` (shuffle, decode, resize, augment, batch) alone."""
    from core import pipeline

    routes = pipeline.plan_routes(paths)
    dataset = pipeline.training_dataset(
        paths, labels, (size, size), batch_size, routes=routes, shuffle=True, augment=True, seed=0
    )
    for _ in dataset.take(2):  # warm-up: tracing, thread pools
        pass
    started = time.perf_counter()
    images = 0
    for _ in range(passes):
        for batch, _ in dataset:
            images += int(batch.shape[0])
    return images / (time.perf_counter() - started)


def step_rates(spec: dict, paths, labels, rounds: int, steps: int, cache_dir: Path) -> dict:
    """Training steps per second fed by the pipeline, by its on-disk cache, and from memory, interleaved."""
    import keras
    import tensorflow as tf

    from core import pipeline
    from core.models import build_model

    size, batch = spec["size"], spec["batch"]
    routes = pipeline.plan_routes(paths)
    prefix = pipeline.cache_prefix(cache_dir, paths, (size, size), routes)
    if not pipeline.cache_exists(prefix):
        pipeline.build_cache(paths, labels, (size, size), routes, prefix)

    def fed(cache):
        return pipeline.training_dataset(
            paths, labels, (size, size), batch, routes=routes, shuffle=True, augment=True, seed=0, cache=cache
        ).repeat()

    in_memory = [(x.numpy(), y.numpy()) for x, y in fed(None).take(steps)]
    images = np.concatenate([x for x, _ in in_memory])
    targets = np.concatenate([y for _, y in in_memory])
    memory = tf.data.Dataset.from_tensor_slices((images, targets)).batch(batch).cache().repeat()
    keras.utils.set_random_seed(0)
    model = build_model(spec["arch"], 3, size, weights=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    sources = {"pipeline": fed(None), "cache": fed(prefix), "memory": memory}
    for source in sources.values():  # warm-up: tracing and first allocations
        model.fit(source, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    times = {name: [] for name in sources}
    for _ in range(rounds):
        for name, source in sources.items():
            started = time.perf_counter()
            model.fit(source, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            times[name].append(steps / (time.perf_counter() - started))
    rates = {name: statistics.median(values) for name, values in times.items()}
    return {
        **{f"{name}_steps_per_second": rate for name, rate in rates.items()},
        "pipeline_ratio": rates["pipeline"] / rates["memory"],
        "cache_ratio": rates["cache"] / rates["memory"],
    }


def bench_pipeline(models, images: int, rounds: int, steps: int) -> list[dict]:
    """Runs both measurements for each model; prints a table; returns the rows."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for name in models:
            spec = MODELS[name]
            folder = Path(tmp) / name
            count = max(images, spec["batch"] * steps)
            paths, labels = make_images(folder, count, spec["file"], spec["format"])
            row = {"model": name, "size": spec["size"], "batch": spec["batch"], "files": count}
            row["pipeline_images_per_second"] = pipeline_images_per_second(paths, labels, spec["size"], spec["batch"])
            row.update(step_rates(spec, paths, labels, rounds, steps, Path(tmp) / "cache"))
            rows.append(row)
            print(
                f"{name:15s} {spec['size']:4d}px batch {spec['batch']:3d} {spec['format']:4s}: pipeline alone "
                f"{row['pipeline_images_per_second']:8.1f} img/s | steps/s pipeline {row['pipeline_steps_per_second']:6.2f} "
                f"cache {row['cache_steps_per_second']:6.2f} memory {row['memory_steps_per_second']:6.2f} | "
                f"ratio pipeline/memory {row['pipeline_ratio']:.2f}, cache/memory {row['cache_ratio']:.2f}",
                flush=True,
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core bench --pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, among {list(MODELS)}")
    parser.add_argument("--images", type=int, default=512, help="generated files per model")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per round and source")
    parser.add_argument("--fast", action="store_true", help="fewer files, rounds and steps: a quick look")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"error: unknown model(s) {unknown}; expected some of {list(MODELS)}", file=sys.stderr)
        return 2
    if min(args.images, args.rounds, args.steps) < 1:
        print("error: --images, --rounds and --steps must be at least 1", file=sys.stderr)
        return 2
    images, rounds, steps = (128, 3, 4) if args.fast else (args.images, args.rounds, args.steps)
    bench_pipeline(models, images, rounds, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
