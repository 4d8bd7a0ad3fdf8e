"""Latency benchmark of every method in `core.explain.METHODS` against its floor and against tf-explain.

For each architecture (`core.models.build_model`, random weights, 1000 classes), each batch size and each
method, after one warm-up call each, the median latency of:

* ``ours``: `core.explain.explain` (compiled and cached once per model/method/options), one class index
  (image 0's prediction) for every image;
* ``floor``: the method's bare work as one compiled ``tf.function`` on the model, from the method's own
  `Explainer.floor` (e.g. one batched gradient of ``samples`` copies per image for SmoothGrad, the forward
  passes of the masked copies for RISE, the same chunking so memory is the same), nothing else;
* ``tf-explain``: tf-explain 0.3.1's ``explain()`` where it has the method (Grad-CAM, vanilla gradients,
  occlusion, SmoothGrad, Integrated Gradients, Gradients x Inputs) with matching settings. It builds every
  noisy or path copy in one pass: above ``tf_explain_max_images`` copies it is skipped (memory), and said so.
  Its failures on Keras 3 models are reported as text; Grad-CAM on a nested backbone is retried on
  `flat_twin`.

The three are timed round by round (ours, floor, tf-explain, ours, ...), so a load change hits them alike.
A method added to the registry is benchmarked without edits here. Run:
``python -m core bench [--archs efficientnetb0 resnet50] [--methods ...] [--batch-sizes 1 16] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import ast
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
DEFAULT_BATCH_SIZES = (1, 16)
DEFAULT_PATCH_SIZE = 32  # 224 px -> 7 x 7 = 49 occluded copies
SLOW_MS = 3000.0  # a method whose warm-up call takes longer is timed `slow_repeats` times


@contextlib.contextmanager
def _quiet():
    """No Keras progress bars, structure warnings or TF retracing warnings (tf-explain triggers them)."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def time_round_robin(functions: dict[str, Callable[[], object]], repeats: int, slow_repeats: int):
    """Median ms of each function, timed in turn round after round, after one warm-up call each.

    A function whose warm-up raises is dropped and its error returned. Returns ``(medians, errors)``.
    """
    medians: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    slowest = 0.0
    for name, fn in functions.items():
        start = time.perf_counter()
        try:
            with _quiet():
                fn()
        except Exception as exc:  # tf-explain breaks on some Keras 3 models: report, don't stop
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            continue
        slowest = max(slowest, (time.perf_counter() - start) * 1000.0)
        medians[name] = []
    rounds = max(1, slow_repeats if slowest > SLOW_MS else repeats)
    for _ in range(rounds):
        for name in medians:
            start = time.perf_counter()
            with _quiet():
                functions[name]()
            medians[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(times) for name, times in medians.items()}, errors


def flat_twin(model, backbone_name: str):
    """The same network with the nested backbone's layers inlined (fresh layers, weights copied).

    tf-explain's Grad-CAM builds ``Model(model.inputs, [model.get_layer(name).output, ...])``, which Keras
    3 cannot do for a layer inside a nested sub-model: this twin gives its timing a model it can run. Only
    for `core.models.build_model` models.
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


def tf_explain_counterpart(method: str, model, images, class_index: int, options: dict):
    """``(call, copies per image in its single pass)`` for tf-explain's ``explain()`` of ``method`` with
    our ``options``; None where tf-explain has no such method. Imported lazily (it pulls in cv2)."""
    data = (images, None)
    if method == "gradcam":
        from tf_explain.core.grad_cam import GradCAM

        # tf-explain looks layers up on the outer model only: the top-level layer holding our target layer
        layer = options["layer_name"][0]
        return (lambda: GradCAM().explain(data, model, class_index, layer, use_guided_grads=False)), 1
    if method == "vanilla_gradients":
        from tf_explain.core.vanilla_gradients import VanillaGradients

        return (lambda: VanillaGradients().explain(data, model, class_index)), 1
    if method == "gradient_x_input":
        from tf_explain.core.gradients_inputs import GradientsInputs

        return (lambda: GradientsInputs().explain(data, model, class_index)), 1
    if method == "occlusion":
        from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity

        explainer = OcclusionSensitivity(batch_size=options["batch_size"])
        return (lambda: explainer.explain(data, model, class_index, options["patch_size"])), 1
    if method == "smoothgrad" and options["base_method"] == "vanilla_gradients":
        from tf_explain.core.smoothgrad import SmoothGrad

        samples, noise = options["samples"], options["noise_level"] * 255.0
        return (lambda: SmoothGrad().explain(data, model, class_index, num_samples=samples, noise=noise)), samples
    if method == "integrated_gradients" and options["baseline"] == "black":
        from tf_explain.core.integrated_gradients import IntegratedGradients

        steps = options["steps"] + 1  # tf-explain's n_steps counts path images; ours counts intervals
        return (lambda: IntegratedGradients().explain(data, model, class_index, n_steps=steps)), steps
    return None


def _shown(options: dict) -> str:
    """The options as a short ``name=value`` list (layer paths joined with '/')."""
    parts = []
    for key, value in options.items():
        if key.startswith("_") or key == "base_options":
            continue
        if isinstance(value, tuple):
            value = "/".join(map(str, value))
        parts.append(f"{key}={value}")
    return " ".join(parts)


def run_bench(
    archs: Sequence[str] = DEFAULT_ARCHS,
    image_size: int = 224,
    repeats: int = 5,
    methods: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    params: dict[str, dict] | None = None,
    patch_size: int = DEFAULT_PATCH_SIZE,
    num_classes: int = 1000,
    slow_repeats: int = 2,
    tf_explain_max_images: int = 64,
    fast: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Benchmarks methods x architectures x batch sizes; returns one row (a dict) per combination.

    Args:
        archs: `core.models.ARCHITECTURES` keys.
        image_size: square input size in pixels.
        repeats: timed rounds per measurement (after one warm-up call each); medians are reported.
        methods: subset of `core.explain.METHODS` (default: all of them, whatever they are).
        batch_sizes: images per explanation call.
        params: ``{method: {name: value}}`` overriding the methods' defaults.
        patch_size: occlusion's patch size unless ``params`` sets it (stride = patch size).
        num_classes: classifier width (1000, as ImageNet).
        slow_repeats: rounds for a measurement whose warm-up took more than 3 s.
        tf_explain_max_images: tf-explain is skipped when its single pass would hold more images.
        fast: start from each method's cheap setting (`Explainer.fast_params`) instead of its defaults.
        log: called with a progress line per measurement (e.g. ``print``); None: silent.

    Returns:
        Dicts with ``arch, method, batch_size, image_size, options, ours_ms, floor_ms, ours_over_floor,
        tf_explain_ms, tf_explain_error, tf_explain_model, tf_explain_over_ours, tf_explain_over_floor``;
        latencies in milliseconds per call (the whole batch).
    """
    import tensorflow as tf

    from core.explain import METHODS, explain, get_explainer
    from core.models import build_model

    methods = tuple(methods or METHODS)
    params = {method: dict(values) for method, values in (params or {}).items()}
    if not fast:
        params.setdefault("occlusion", {}).setdefault("patch_size", patch_size)
    rows = []
    for arch in archs:
        tf.keras.backend.clear_session()
        model = build_model(arch, num_classes=num_classes, image_size=image_size, weights=None)
        twin = None
        for batch_size in batch_sizes:
            rng = np.random.default_rng(batch_size)
            images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
            class_index = int(np.asarray(model(images[:1], training=False)).argmax())
            x = tf.constant(images)
            c = tf.constant([class_index] * batch_size, tf.int32)
            signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32), tf.TensorSpec([None], tf.int32)]
            for method in methods:
                explainer = get_explainer(method)
                method_params = {**(explainer.fast_params if fast else {}), **params.get(method, {})}
                options = explainer.check_params(model, image_size, image_size, **method_params)
                floor = tf.function(explainer.floor(model, options, image_size, image_size), input_signature=signature)
                functions = {  # timed at once, inside this iteration
                    "ours": lambda m=method, p=method_params: explain(model, images, m, class_index, **p),  # noqa: B023
                    "floor": lambda f=floor: f(x, c).numpy(),  # noqa: B023
                }
                tf_model, skipped = "same", None
                counterpart = tf_explain_counterpart(method, model, images, class_index, options)
                if counterpart is not None and counterpart[1] * batch_size > tf_explain_max_images:
                    skipped = f"skipped: one pass of {counterpart[1] * batch_size} images (> {tf_explain_max_images})"
                elif counterpart is not None:
                    functions["tf-explain"] = counterpart[0]
                medians, errors = time_round_robin(functions, repeats, slow_repeats)
                tf_error = errors.get("tf-explain") or skipped
                if "tf-explain" in errors and method == "gradcam" and len(options["layer_name"]) == 2:
                    try:  # Keras 3 cannot build tf-explain's grad model inside a nested backbone
                        twin = twin or flat_twin(model, options["layer_name"][0])
                        flat_options = {**options, "layer_name": options["layer_name"][1:]}
                        call, _ = tf_explain_counterpart(method, twin, images, class_index, flat_options)
                        more, more_errors = time_round_robin({"tf-explain": call}, repeats, slow_repeats)
                        if more:
                            medians["tf-explain"], tf_model = more["tf-explain"], "flat twin"
                        else:
                            tf_error += f"; on a flat twin: {more_errors['tf-explain']}"
                    except Exception as exc:
                        tf_error += f"; flat twin: {type(exc).__name__}: {exc}".splitlines()[0][:160]
                for side in ("ours", "floor"):
                    if side in errors:
                        raise RuntimeError(f"{arch} {method} batch {batch_size}: {side} failed: {errors[side]}")
                ours, floor_ms, tfx = medians["ours"], medians["floor"], medians.get("tf-explain")
                row = {
                    "arch": arch,
                    "method": method,
                    "batch_size": batch_size,
                    "image_size": image_size,
                    "options": _shown(options),
                    "ours_ms": ours,
                    "floor_ms": floor_ms,
                    "ours_over_floor": ours / floor_ms,
                    "tf_explain_ms": tfx,
                    "tf_explain_error": None if tfx else tf_error,
                    "tf_explain_model": tf_model if tfx else None,
                    "tf_explain_over_ours": tfx / ours if tfx else None,
                    "tf_explain_over_floor": tfx / floor_ms if tfx else None,
                }
                rows.append(row)
                if log:
                    shown = f"{tfx:,.1f} ms" if tfx else (tf_error or "-")
                    log(
                        f"{arch} {method} x{batch_size}: ours {ours:,.1f} ms, floor {floor_ms:,.1f} ms "
                        f"({ours / floor_ms:.2f}x), tf-explain {shown}"
                    )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Rows of `run_bench` as a fixed-width text table (milliseconds per call)."""

    def ms(value):
        return "-" if value is None else f"{value:,.1f}"

    def ratio(value):
        return "-" if value is None else f"{value:.2f}x"

    columns = (
        "arch",
        "method",
        "batch",
        "ours ms",
        "floor ms",
        "ours/floor",
        "tf-explain ms",
        "tfx/ours",
        "tfx/floor",
        "note",
    )
    lines = []
    for row in rows:
        note = row.get("tf_explain_error") or ""
        if row.get("tf_explain_model") == "flat twin":
            note = "tf-explain timed on a flat twin (Keras 3 cannot tap the nested backbone)"
        note = f"{row.get('options', '')}  {note}".strip()
        tfx = ms(row["tf_explain_ms"]) if row.get("tf_explain_ms") else ("failed" if note and "Error" in note else "-")
        lines.append(
            (
                row["arch"],
                row["method"],
                str(row["batch_size"]),
                ms(row["ours_ms"]),
                ms(row["floor_ms"]),
                ratio(row["ours_over_floor"]),
                tfx,
                ratio(row.get("tf_explain_over_ours")),
                ratio(row.get("tf_explain_over_floor")),
                note,
            )
        )
    left = (0, 1, len(columns) - 1)
    widths = [len(c) for c in columns]
    for line in lines:
        widths = [max(w, len(v)) for w, v in zip(widths, line)]
    widths[-1] = 0

    def fmt(values):
        cells = (v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))
        return "  ".join(cells).rstrip()

    out = [fmt(columns), fmt(["-" * w for w in widths[:-1]] + ["----"])]
    return "\n".join(out + [fmt(line) for line in lines])


def parse_params(values: Sequence[str], methods: Sequence[str]) -> dict[str, dict]:
    """``["smoothgrad.samples=10", "rise.cell_size=None"]`` -> ``{"smoothgrad": {"samples": 10}, ...}``."""
    parsed: dict[str, dict] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or method not in methods or not name:
            raise ValueError(f"Expected --param METHOD.NAME=VALUE with METHOD in {list(methods)}. Received: {value!r}")
        try:
            parsed_value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            parsed_value = raw  # a plain word: a string (a choice or a layer name)
        parsed.setdefault(method, {})[name] = parsed_value
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m core bench [options]``; prints the table (or JSON with --json)."""
    from core.explain import METHODS

    parser = argparse.ArgumentParser(prog="python -m core bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures (default: %(default)s)")
    add("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD", help="methods (default: all)")
    add(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=list(DEFAULT_BATCH_SIZES),
        help="images per call (default: %(default)s)",
    )
    add("--image-size", type=int, default=224, help="input size in pixels (default: %(default)s)")
    add("--repeats", type=int, default=5, help="timed rounds per measurement (default: %(default)s)")
    add("--slow-repeats", type=int, default=2, help="timed rounds when a call takes over 3 s (default: %(default)s)")
    add("--param", action="append", default=[], metavar="METHOD.NAME=VALUE", help="a method parameter (repeatable)")
    add("--patch-size", type=int, default=DEFAULT_PATCH_SIZE, help="occlusion patch (default: %(default)s)")
    add("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    add("--tf-explain-max-images", type=int, default=64, help="skip tf-explain above this many images in one pass")
    add("--fast", action="store_true", help="each method's cheap setting (its fast_params), for a quick run")
    add("--json", nargs="?", const="-", default=None, metavar="PATH", help="write rows as JSON to PATH (or stdout)")
    args = parser.parse_args(argv)
    try:
        params = parse_params(args.param, METHODS)
    except ValueError as exc:
        parser.error(str(exc))
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json == "-" else None
    rows = run_bench(
        archs=args.archs,
        image_size=args.image_size,
        repeats=args.repeats,
        methods=args.methods,
        batch_sizes=args.batch_sizes,
        params=params,
        patch_size=args.patch_size,
        num_classes=args.num_classes,
        slow_repeats=args.slow_repeats,
        tf_explain_max_images=args.tf_explain_max_images,
        fast=args.fast,
        log=progress or (lambda line: print(line, flush=True)),
    )
    if args.json is None:
        print("\nSummary (median ms per call):\n" + format_table(rows))
    elif args.json == "-":
        print(json.dumps(rows, indent=2))
    else:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
        print(format_table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
