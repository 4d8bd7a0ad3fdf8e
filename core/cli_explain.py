"""``python -m core explain``: its arguments and what it does (kept apart from ``core/__main__.py``).

Every method and parameter comes from `core.explain.describe`; nothing here names a method. Every
argument is checked (methods, ``--param`` values against each method's kinds and bounds, images, the
run and its class names, the model) before the first file is written. A batch (``--images``) can be
sharded over the replicas and workers of ``--strategy`` (`core.sharding`); its summary.json says who
computed it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_METHODS = "gradcam,occlusion,vanilla_gradients"
NONE_WORDS = ("none", "null")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
# Older flags kept as aliases: each sets the parameter of that name on every chosen method that has it.
ALIASES = {"layer_name": "--layer-name", "patch_size": "--patch-size"}
SUMMARY_PARTS_DIR = "summary.parts"  # each worker's part while a multi-worker batch gathers (core.sharding)


def _opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected an opacity between 0 and 1. Received: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1. Received: {text!r}")
    return value


def add_parser(sub, add_workspace) -> None:
    """Adds the ``explain`` sub-command to ``sub`` (an argparse sub-parsers object)."""
    from core import sharding  # no TensorFlow
    from core.visualize import COLORMAPS  # numpy only: building the parser stays fast

    p = sub.add_parser(
        "explain",
        help="explain images with several methods; write overlays, heatmaps, maps and a JSON report",
        description="Explain one image (--image) or many (--images: files and folders, in batches) with any "
        "methods; per image: overlays and heatmaps (PNG), maps (.npy/.npz) at the original image size, and "
        "explanation.json. `--list-methods` prints every method with its parameters.",
    )
    p.add_argument("run", nargs="?", help="run id (folder name under <workspace>/runs) or a run folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--image", help="one image file; its files are written into --out")
    source.add_argument(
        "--images", nargs="+", metavar="DIR_OR_FILE", help="image files and folders (searched recursively); "
        "each image gets a sub-folder of --out"
    )  # fmt: skip
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"'all' or a comma list (default: {DEFAULT_METHODS})")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method's parameter, repeatable (e.g. occlusion.patch_size=8, gradcam.layer_name=top_conv, "
        "occlusion.stride=none); see --list-methods",
    )
    p.add_argument("--out", help="output folder")
    p.add_argument("--class-name", default=None, help="class to explain (default: each image's predicted class)")
    p.add_argument("--layer-name", default=None, help="alias of --param METHOD.layer_name=... for every method")
    p.add_argument("--patch-size", default=None, help="alias of --param METHOD.patch_size=... for every method")
    p.add_argument("--alpha", type=_opacity, default=0.5, help="overlay opacity, 0 to 1 (default 0.5)")
    p.add_argument("--colormap", choices=COLORMAPS, default="jet")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (default 16)")
    p.add_argument("--list-methods", action="store_true", help="print every method and its parameters, then exit")
    sharding.add_arguments(p, "batch of --images")
    add_workspace(p)


# ----------------------------------------------------------------------------------------------
# Parsing and checking (no file is written here)


def parse_methods(text: str) -> list[str]:
    """``"all"`` or a comma list -> method names; raises ValueError naming the unknown ones."""
    from core.explain import METHODS

    if text.strip() == "all":
        return list(METHODS)
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}. Expected 'all' or some of {list(METHODS)}")
    if not methods:
        raise ValueError(f"Expected at least one method in --methods. Received: {text!r}")
    return methods


def parse_value(method: str, name: str, entry: dict, text: str):
    """One ``--param`` value converted to the kind `describe` gives; raises ValueError saying what was
    expected. Bounds checked here are the size-independent ones (see `check_bounds`)."""
    where = f"--param {method}.{name}"
    word = text.strip().lower()
    if word in NONE_WORDS:
        if entry["nullable"]:
            return None
        raise ValueError(f"{where}: None is not accepted ({entry['help']}). Received: {text!r}")
    kind = entry["kind"]
    if kind == "bool":
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"{where}: expected a bool (true/false). Received: {text!r}")
    if kind == "choice":
        for choice in entry["choices"]:
            if str(choice) == text.strip():
                return choice
        raise ValueError(f"{where}: expected one of {[str(c) for c in entry['choices']]}. Received: {text!r}")
    if kind == "layer":
        if not text.strip():
            raise ValueError(f"{where}: expected a layer name. Received: an empty value")
        return text.strip()
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"{where}: expected {'an int' if kind == 'int' else 'a number'}. Received: {text!r}") from None
    if kind == "float" and not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number. Received: {text!r}")
    return _within(where, entry, value)


def _within(where: str, entry: dict, value):
    low, high = entry["minimum"], entry["maximum"]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else (
            f">= {low}" if low is not None else f"<= {high}"
        )  # fmt: skip
        raise ValueError(f"{where}: expected a value {bounds}. Received: {value!r}")
    return value


def parse_params(texts, methods, aliases: dict | None = None) -> dict[str, dict]:
    """``["METHOD.NAME=VALUE", ...]`` (and alias values ``{param name: text}``) -> ``{method: {name: value}}``.

    Raises ValueError for bad syntax, a method not among ``methods``, an unknown parameter, a value of
    the wrong kind, a parameter given twice, or an alias no chosen method takes.
    """
    from core.explain import describe

    specs = {method: describe(method)["params"] for method in methods}
    params: dict[str, dict] = {method: {} for method in methods}
    for text in texts:
        key, sep, value = text.partition("=")
        method, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not method or not name:
            raise ValueError(f"Expected --param METHOD.NAME=VALUE (e.g. occlusion.patch_size=8). Received: {text!r}")
        if method not in specs:
            raise ValueError(f"--param {key}: {method!r} is not among the chosen methods {list(methods)}")
        if name not in specs[method]:
            raise ValueError(
                f"--param {key}: {method} takes {sorted(specs[method]) or 'no parameters'}. Received: {name!r}"
            )
        if name in params[method]:
            raise ValueError(f"--param {key} is given twice")
        params[method][name] = parse_value(method, name, specs[method][name], value)
    for name, text in (aliases or {}).items():
        if text is None:
            continue
        takers = [m for m in methods if name in specs[m]]
        if not takers:
            raise ValueError(f"{ALIASES.get(name, name)} applies to none of the chosen methods {list(methods)}")
        for method in takers:
            if name not in params[method]:
                params[method][name] = parse_value(method, name, specs[method][name], text)
    return {method: values for method, values in params.items() if values}


def check_bounds(params: dict[str, dict], input_size: tuple[int, int], layers: list[str]) -> None:
    """Checks values against the bounds `describe` gives for the model's input size, and layer names
    against the model's layers; raises ValueError."""
    from core.explain import describe

    for method, values in params.items():
        spec = describe(method, tuple(input_size))["params"]
        for name, value in values.items():
            entry, where = spec[name], f"--param {method}.{name}"
            if value is None:
                continue
            if entry["kind"] == "layer" and value not in layers:
                shown = ", ".join(layers[-12:]) or "none"
                raise ValueError(f"{where}: the model has no layer {value!r} with a 4-D output. Layers: {shown}")
            if entry["kind"] in ("int", "float"):
                _within(f"{where} (for the model's {input_size[0]}x{input_size[1]} input)", entry, value)


def image_files(sources) -> list[tuple[Path, str]]:
    """Image files from paths (files and folders, folders searched recursively, sorted), each with a
    unique output folder name; raises ValueError for a missing path or a folder without images."""
    from core.data import IMAGE_EXTENSIONS

    found: list[tuple[Path, str]] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            found.append((path, path.stem))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder {path}")
            found.extend((f, "__".join(f.relative_to(path).with_suffix("").parts)) for f in files)
        else:
            raise ValueError(f"No such image file or folder: {path}")
    used: dict[str, int] = {}
    unique = []
    for path, name in found:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
        used[safe] = used.get(safe, 0) + 1
        unique.append((path, safe if used[safe] == 1 else f"{safe}-{used[safe]}"))
    return unique


def checked_class_names(run, num_classes: int | None = None) -> list[str]:
    """The run's class names, or ValueError when they are missing, malformed or do not fit the model."""
    names = run.meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"Run {run.id}: expected class_names in run.json as a list of non-empty strings. Received: {names!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"Run {run.id}: class_names in run.json repeat a name. Received: {names}")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"Run {run.id}: run.json lists {len(names)} class names {names} but the model has {num_classes} outputs"
        )
    return names


def list_methods() -> str:
    """Every method and its parameters, as ``--list-methods`` prints them."""
    from core.explain import METHODS, describe

    lines = []
    for method in METHODS:
        info = describe(method)
        lines.append(f"{method}: {info['title']}. {info['description']}")
        for name, entry in info["params"].items():
            kind = "one of " + "/".join(map(str, entry["choices"])) if entry["kind"] == "choice" else entry["kind"]
            bounds = "" if entry["minimum"] is None else f", >= {entry['minimum']}"
            bounds += "" if entry["maximum"] is None else f", <= {entry['maximum']}"
            none = ", or none" if entry["nullable"] else ""
            lines.append(f"  {method}.{name}={entry['default']} ({kind}{bounds}{none}): {entry['help']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Running


def _progress(done: int, total: int, started: float, stream=None) -> None:
    stream = stream or sys.stderr
    width = 30
    filled = round(width * done / total) if total else width
    end = "\n" if done >= total else ""
    stream.write(
        f"\rexplain [{'#' * filled}{'-' * (width - filled)}] {done}/{total} images, {time.perf_counter() - started:.1f} s"
        + end
    )
    stream.flush()


def _write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def run(args) -> int:
    """Explains the images; writes, per image, overlays, heatmaps, maps and explanation.json."""
    if args.list_methods:
        print(list_methods())
        return 0
    if not args.run:
        raise ValueError("Expected a run id (or run folder) as the first argument")
    if not args.out:
        raise ValueError("Expected --out, the output folder")
    if not args.image and not args.images:
        raise ValueError("Expected --image FILE or --images DIR_OR_FILE ...")
    from core import runs, sharding
    from core.cli_serve import checked_out_folder

    workspace = runs.check_workspace(args.workspace)
    out = checked_out_folder(args.out)  # a folder (created later), in a folder that exists

    if args.image and (args.strategy != "auto" or args.logical_cpus):
        raise ValueError("--strategy and --logical-cpus shard a batch of images: use them with --images, not --image")
    sharding.check_options(args.strategy)  # before importing TensorFlow: a missing TF_CONFIG fails fast
    methods = parse_methods(args.methods)
    params = parse_params(args.param, methods, {"layer_name": args.layer_name, "patch_size": args.patch_size})
    sources = image_files([args.image] if args.image else args.images)

    run_ = runs.find_run(workspace, args.run)
    class_names = checked_class_names(run_)
    class_index = None
    if args.class_name is not None:
        if args.class_name not in class_names:
            raise ValueError(f"Unknown class {args.class_name!r}. Expected one of {class_names}")
        class_index = class_names.index(args.class_name)
    # Before TensorFlow runs any op (importing it runs none): the CPU split and the strategy.
    placement = None if args.image else sharding.make_placement(args.strategy, args.logical_cpus)

    from core.compare import validate_params
    from core.data import load_image
    from core.explain import conv_layer_names
    from core.explain.graph import num_classes
    from core.model_import import load_run_model
    from core.models import input_size

    model = load_run_model(run_.path)
    size = input_size(model)
    checked_class_names(run_, num_classes(model))
    needs_layers = any(isinstance(v, str) for values in params.values() for v in values.values())
    check_bounds(params, size, conv_layer_names(model) if needs_layers else [])
    validate_params(model, methods, params)
    job = _Job(run_, model, size, methods, params, class_index, class_names, out, args.alpha, args.colormap)
    if placement is None:
        return _explain_image(job, sources[0][0], load_image(sources[0][0]))  # an unreadable --image fails here
    return _explain_images(job, sources, args.batch_size, placement)


@dataclass
class _Job:
    """What every image of one ``explain`` command shares."""

    run: object
    model: object
    size: tuple[int, int]
    methods: list[str]
    params: dict
    class_index: int | None
    class_names: list[str]
    out: Path
    alpha: float
    colormap: str

    def explain(self, originals, paths, folders) -> list[tuple[dict, bool, dict]]:
        """Explains a batch of decoded images and writes each image's files into its folder; per image, its
        summary entry, whether a method failed, and its explanation.json report."""
        import numpy as np

        from core.compare import explain_batch, explanation_files
        from core.visualize import resize_image

        batch = np.stack([resize_image(image, self.size) for image in originals])
        probs, per_image = explain_batch(self.model, batch, self.methods, self.class_index, self.params)
        done = []
        for original, path, folder, p, results in zip(originals, paths, folders, probs, per_image):
            extra = {"run": self.run.id, "image": str(path), "model_input_size": list(self.size)}
            files, report = explanation_files(
                original, p, results, self.class_names, alpha=self.alpha, colormap=self.colormap, extra=extra
            )
            _write(folder, files)
            entry = {"image": str(path), "folder": str(folder), "predicted_class": report["predicted_class"]}
            done.append((entry, any(r.error for r in results), report))
        return done


def _explain_image(job: _Job, path: Path, original) -> int:
    """``--image``: its files go straight into --out; its report is printed."""
    ((_, failed, report),) = job.explain([original], [path], [job.out])
    print(json.dumps(report, indent=2, default=str))
    return 1 if failed else 0


def _explain_images(job: _Job, sources: list[tuple[Path, str]], batch_size: int, placement) -> int:
    """``--images``: sharded over the placement's replicas and workers (`core.sharding`), ``batch_size``
    images per replica at a time; each image's files go into its sub-folder of --out, and one
    ``summary.json`` lists every image in the order given (with several workers, the chief writes it)."""
    import numpy as np

    from core import sharding
    from core.data import ImageError, load_image

    started = time.perf_counter()
    _progress(0, len(sources), started)

    def load(indices):
        loaded = []
        for i in indices:
            try:
                loaded.append((int(i), load_image(sources[i][0]), None))
            except (ImageError, OSError) as exc:
                print(f"\nskipped {sources[i][0]}: {exc}", file=sys.stderr)
                loaded.append((int(i), None, str(exc)))
        return loaded

    def work(indices, loaded, totals):
        entries = {i: ({"image": str(sources[i][0]), "error": error}, True) for i, _, error in loaded if error}
        good = [(i, image) for i, image, error in loaded if error is None]
        if good:
            chosen = [sources[i] for i, _ in good]
            done = job.explain([image for _, image in good], [p for p, _ in chosen], [job.out / n for _, n in chosen])
            entries.update({i: (entry, failed) for (i, _), (entry, failed, _) in zip(good, done)})
        return {
            "entry": np.array([json.dumps(entries[int(i)][0]) for i in indices]),
            "failed": np.array([entries[int(i)][1] for i in indices]),
        }

    gathered = sharding.map_shards(
        placement,
        len(sources),
        batch_size,
        work,
        load=load,
        progress=lambda done, total: _progress(done, total, started),
        parts_dir=job.out / SUMMARY_PARTS_DIR,
    )
    if gathered is None:  # a worker that is not the chief
        print(f"Worker {placement.worker_index} finished; the chief writes {job.out / 'summary.json'}.")
        return 0
    summary = {
        "run": job.run.id,
        "out": str(job.out),
        "methods": job.methods,
        "images": [json.loads(entry) for entry in gathered.rows["entry"]],
        "seconds": round(time.perf_counter() - started, 3),
        "distribution": sharding.describe(placement),
    }
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 1 if gathered.rows["failed"].any() else 0
