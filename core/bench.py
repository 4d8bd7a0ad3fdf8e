"""Latency benchmark of `core.explain` against tf-explain and against a hand-written floor.

For each architecture (`core.models.build_model`, random weights, 1000 classes) and each method, on one
image after a warm-up call, the median latency of:

* ``ours``: `core.explain.explain` (compiled and cached once per model/method/options);
* ``tf-explain``: tf-explain 0.3.1's own ``explain()`` on the same model and image (its failures are
  reported as text). Grad-CAM gets the backbone holding our target layer by name; Keras 3 cannot build
  tf-explain's grad model on a nested sub-model, so it is then timed on `flat_twin` (the same network and
  weights with the backbone's layers inlined) and the failure is kept in the note;
* ``floor``: the same computation as a bare hand-written ``tf.function`` on the model (Grad-CAM: the
  backbone, then the head under a tape and the formula; vanilla gradients: gradient of the logit with
  respect to the input; occlusion: the same forward passes in the same batches, nothing else).

Run: ``python -m core bench [--archs efficientnetb0 resnet50] [--image-size 224] [--repeats 9]
[--patch-size 32] [--json [PATH]]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_ARCHS = ("efficientnetb0", "resnet50")
DEFAULT_PATCH_SIZE = 32  # 224 px -> 7 x 7 = 49 occluded copies: a few seconds per explanation on a 2-core CPU


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (tracing, allocations)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _median_ms_interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int):
    """Median ms of two functions timed alternately (after a warm-up each), so load drifts hit both."""
    first(), second()
    times: tuple[list, list] = ([], [])
    for _ in range(max(1, repeats)):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times[0]), statistics.median(times[1])


def _time_quietly(fn: Callable[[], object], repeats: int) -> float:
    """`_median_ms` without Keras progress bars (model.predict), Keras 3 structure warnings or TF's
    retracing warnings (tf-explain's VanillaGradients retraces on every call)."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _median_ms(fn, repeats)
    finally:
        logger.setLevel(level)


def _floor_functions(model, image_size: tuple[int, int], layer_path, patch_size: int, batch_size: int):
    """Hand-written tf.functions doing each method's work and nothing else (models from build_model)."""
    import keras
    import tensorflow as tf

    height, width = image_size
    signature = [tf.TensorSpec([None, height, width, 3], tf.float32), tf.TensorSpec([None], tf.int32)]
    preprocessing = model.get_layer("preprocessing")
    backbone = model.get_layer(layer_path[0])
    if len(layer_path) != 2 or backbone.get_layer(layer_path[1]).output is not backbone.output:
        raise ValueError(f"The Grad-CAM floor expects the backbone's output layer. Received: {layer_path}")
    pooling, logits = model.get_layer("avg_pool"), model.get_layer("logits")
    score_model = keras.Model(model.inputs, logits.output)

    def scale(maps):
        peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(maps, peak)

    @tf.function(input_signature=signature)
    def gradcam(x, c):
        activations = backbone(preprocessing(x), training=False)
        with tf.GradientTape() as tape:
            tape.watch(activations)
            score = tf.gather(logits(pooling(activations)), c, axis=1, batch_dims=1)
        grads = tape.gradient(score, activations)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        return scale(tf.image.resize(cam[..., None], (height, width))[..., 0])

    @tf.function(input_signature=signature)
    def vanilla_gradients(x, c):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.gather(score_model(x, training=False), c, axis=1, batch_dims=1)
        return scale(tf.reduce_sum(tf.abs(tape.gradient(score, x)), axis=-1))

    n_copies = -(-height // patch_size) * -(-width // patch_size)
    batches = [min(batch_size, n_copies - start) for start in range(0, n_copies, batch_size)]

    @tf.function(input_signature=signature)
    def occlusion(x, c):
        total = tf.gather(model(x, training=False), c, axis=1, batch_dims=1)  # the unoccluded pass
        for size in batches:  # the occluded passes, same batch sizes, no patch bookkeeping
            copies = tf.tile(x[:1], [size, 1, 1, 1])
            total += tf.reduce_sum(tf.gather(model(copies, training=False), c[0], axis=1))
        return total

    return {"gradcam": gradcam, "vanilla_gradients": vanilla_gradients, "occlusion": occlusion}


def flat_twin(model, backbone_name: str):
    """The same network with the nested backbone's layers inlined (fresh layers, weights copied).

    tf-explain's Grad-CAM builds ``Model(model.inputs, [model.get_layer(name).output, ...])``, which Keras
    3 cannot do for a layer inside a nested sub-model (nor for the sub-model itself): this twin gives its
    timing a model it can run. Only for `core.models.build_model` models.
    """
    import keras

    backbone = model.get_layer(backbone_name)
    pairs = []

    def fresh(op):
        if not isinstance(op, keras.layers.Layer):
            return op
        twin = op.__class__.from_config(op.get_config())
        pairs.append((twin, op))
        return twin

    inputs = keras.Input(model.inputs[0].shape[1:], name="pixels")
    x = model.get_layer("preprocessing")(inputs)
    x = backbone._run_through_graph(backbone._standardize_inputs(x), operation_fn=fresh)
    x = x[0] if isinstance(x, (list, tuple)) else x
    for layer in model.layers:
        if layer.name in ("avg_pool", "head_dropout", "logits", "predictions"):
            x = layer(x)
    twin = keras.Model(inputs, x, name=f"{model.name}_flat")
    for new, old in pairs:
        new.set_weights(old.get_weights())
    return twin


def _tf_explain_call(method: str, model, images, class_index: int, layer_path, patch_size: int, batch_size: int):
    """tf-explain's own explain() for ``method`` (imported lazily: it pulls in cv2 and callbacks)."""
    if method == "gradcam":
        from tf_explain.core.grad_cam import GradCAM

        # tf-explain looks layers up on the outer model only: give it the backbone, whose output is the
        # target layer's output.
        layer_name = layer_path[0]
        return lambda: GradCAM().explain((images, None), model, class_index, layer_name, use_guided_grads=False)
    if method == "vanilla_gradients":
        from tf_explain.core.vanilla_gradients import VanillaGradients

        return lambda: VanillaGradients().explain((images, None), model, class_index)
    if method == "occlusion":
        from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity

        explainer = OcclusionSensitivity(batch_size=batch_size)
        return lambda: explainer.explain((images, None), model, class_index, patch_size)
    raise ValueError(f"No tf-explain counterpart. Received: method={method!r}")


def run_bench(
    archs: Sequence[str] = DEFAULT_ARCHS,
    image_size: int = 224,
    repeats: int = 9,
    methods: Sequence[str] | None = None,
    patch_size: int = DEFAULT_PATCH_SIZE,
    num_classes: int = 1000,
    slow_repeats: int = 2,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Benchmarks every method on every architecture; returns one row (a dict) per (arch, method).

    Args:
        archs: `core.models.ARCHITECTURES` keys.
        image_size: square input size in pixels.
        repeats: timed calls per measurement (after one warm-up call); the median is reported. Ours and
            the floor are timed alternately, so a load change on the machine hits both.
        methods: subset of `core.explain.METHODS` (default all).
        patch_size: occlusion patch size (stride = patch size; batch size 64).
        num_classes: classifier width (1000, as ImageNet).
        slow_repeats: timed calls for the slow measurements: occlusion, and every tf-explain call.
        log: called with a progress line per measurement (e.g. ``print``); None: silent.

    Returns:
        Dicts with ``arch, method, image_size, layer_name, ours_ms, tf_explain_ms, tf_explain_error,
        tf_explain_over_ours, floor_ms, ours_over_floor``; latencies in milliseconds for a batch of one.
    """
    import tensorflow as tf

    from core.explain import METHODS, PARAMS, explain, graph
    from core.models import build_model

    methods = tuple(methods or METHODS)
    batch_size = PARAMS["occlusion"]["batch_size"]
    rows = []
    for arch in archs:
        tf.keras.backend.clear_session()
        model = build_model(arch, num_classes=num_classes, image_size=image_size, weights=None)
        images = np.random.default_rng(0).uniform(0, 255, (1, image_size, image_size, 3)).astype(np.float32)
        class_index = int(np.asarray(model(images, training=False)).argmax())
        layer_path = graph.find_layer(model, graph.default_layer_name(model))
        floors = _floor_functions(model, (image_size, image_size), layer_path, patch_size, batch_size)
        for method in methods:
            params = {"patch_size": patch_size} if method == "occlusion" else {}
            x, c = tf.constant(images), tf.constant([class_index], tf.int32)
            ours_ms, floor_ms = _median_ms_interleaved(
                lambda: explain(model, images, method, **params),  # noqa: B023 (called at once)
                lambda: floors[method](x, c).numpy(),  # noqa: B023
                slow_repeats if method == "occlusion" else repeats,
            )
            tf_ms, tf_error, tf_model = None, None, "same"
            try:
                call = _tf_explain_call(method, model, images, class_index, layer_path, patch_size, batch_size)
                tf_ms = _time_quietly(call, slow_repeats)
            except Exception as exc:  # tf-explain breaks on some Keras 3 models: report, don't stop
                tf_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            if tf_ms is None and method == "gradcam" and len(layer_path) == 2:
                try:
                    twin = flat_twin(model, layer_path[0])
                    call = _tf_explain_call(method, twin, images, class_index, layer_path[1:], patch_size, batch_size)
                    tf_ms, tf_model = _time_quietly(call, slow_repeats), "flat twin"
                except Exception as exc:
                    tf_error += f"; on a flat twin: {type(exc).__name__}: {exc}".splitlines()[0][:120]
            row = {
                "arch": arch,
                "method": method,
                "image_size": image_size,
                "layer_name": layer_path[-1] if method == "gradcam" else None,
                "patch_size": patch_size if method == "occlusion" else None,
                "ours_ms": ours_ms,
                "tf_explain_ms": tf_ms,
                "tf_explain_error": tf_error,
                "tf_explain_model": tf_model,
                "tf_explain_over_ours": tf_ms / ours_ms if tf_ms else None,
                "floor_ms": floor_ms,
                "ours_over_floor": ours_ms / floor_ms,
            }
            rows.append(row)
            if log:
                tfx = f"{tf_ms:,.1f} ms" if tf_ms else "failed"
                log(f"{arch} {method}: ours {ours_ms:,.1f} ms, tf-explain {tfx}, floor {floor_ms:,.1f} ms")
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Rows of `run_bench` as a fixed-width text table (milliseconds, batch of one)."""

    def ms(value):
        return "-" if value is None else f"{value:,.1f}"

    def ratio(value):
        return "-" if value is None else f"{value:.2f}x"

    columns = ("arch", "method", "px", "ours ms", "tf-explain ms", "tfx/ours", "floor ms", "ours/floor", "note")
    lines = []
    for row in rows:
        note = failed = row.get("tf_explain_error") or ""
        if row.get("tf_explain_model") == "flat twin":
            note = f"tf-explain timed on a flat twin (same model: {note})"
        if row.get("layer_name"):
            note = f"layer={row['layer_name']} {note}".strip()
        if row.get("patch_size"):
            note = f"patch={row['patch_size']} {note}".strip()
        lines.append(
            (
                row["arch"],
                row["method"],
                str(row["image_size"]),
                ms(row["ours_ms"]),
                ms(row["tf_explain_ms"]) if row.get("tf_explain_ms") else "failed" if failed else "-",
                ratio(row.get("tf_explain_over_ours")),
                ms(row["floor_ms"]),
                ratio(row["ours_over_floor"]),
                note,
            )
        )
    widths = [max(len(c), 14 if i in (0, 1) else 8) for i, c in enumerate(columns)]
    for line in lines:
        widths = [max(w, len(v)) for w, v in zip(widths, line)]
    widths[-1] = 0

    def fmt(values):
        cells = (v.ljust(w) if i in (0, 1, 8) else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))
        return "  ".join(cells).rstrip()

    out = [fmt(columns), fmt(["-" * w for w in widths[:-1]] + ["----"])]
    return "\n".join(out + [fmt(line) for line in lines])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m core bench [options]``; prints the table (or JSON with --json)."""
    from core.explain import METHODS

    parser = argparse.ArgumentParser(prog="python -m core bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures (default: %(default)s)")
    add("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods (default: all)")
    add("--image-size", type=int, default=224, help="input size in pixels (default: %(default)s)")
    add("--repeats", type=int, default=9, help="timed calls per measurement (default: %(default)s)")
    add("--patch-size", type=int, default=DEFAULT_PATCH_SIZE, help="occlusion patch (default: %(default)s)")
    parser.add_argument(
        "--slow-repeats", type=int, default=2, help="timed calls for occlusion and tf-explain (default: %(default)s)"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH", help="write rows as JSON to PATH (or stdout)"
    )
    args = parser.parse_args(argv)
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json == "-" else None
    rows = run_bench(
        archs=args.archs,
        image_size=args.image_size,
        repeats=args.repeats,
        methods=args.methods,
        patch_size=args.patch_size,
        num_classes=args.num_classes,
        slow_repeats=args.slow_repeats,
        log=progress or (lambda line: print(line, flush=True)),
    )
    if args.json is None:
        print("\nSummary (median ms, batch of 1):\n" + format_table(rows))
    elif args.json == "-":
        print(json.dumps(rows, indent=2))
    else:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
        print(format_table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
