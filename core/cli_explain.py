"""``python -m core explain``: its arguments and what it does (kept apart from ``core/__main__.py``)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub, add_workspace) -> None:
    """Adds the ``explain`` sub-command to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser("explain", help="explain one image with several methods; write overlays, maps, JSON")
    p.add_argument("run")
    p.add_argument("--image", required=True)
    p.add_argument("--methods", default="gradcam,occlusion,vanilla_gradients")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--class-name", default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--layer-name", default=None, help="Grad-CAM layer (default: the last 4-D layer)")
    p.add_argument("--patch-size", type=int, default=None, help="occlusion patch size in pixels")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    add_workspace(p)


def run(args) -> int:
    """Explains one image with several methods; writes overlays, heatmaps, raw maps and a JSON report."""
    import numpy as np
    from PIL import Image

    from core import runs
    from core.compare import explain_side_by_side
    from core.data import load_image
    from core.explain import METHODS
    from core.model_import import load_run_model
    from core.models import input_size
    from core.visualize import colorize, overlay

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}. Expected some of {list(METHODS)}")
    run = runs.find_run(runs.workspace_dir(args.workspace), args.run)
    model = load_run_model(run.path)
    image = load_image(args.image, input_size(model))
    class_names = run.class_names
    class_index = None
    if args.class_name is not None:
        if args.class_name not in class_names:
            raise ValueError(f"Unknown class {args.class_name!r}. Expected one of {class_names}")
        class_index = class_names.index(args.class_name)
    params = {"occlusion": {"patch_size": args.patch_size}} if args.patch_size is not None else {}
    if args.layer_name:
        params["gradcam"] = {"layer_name": args.layer_name}
    probs, results = explain_side_by_side(model, image, methods, class_index, params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out / "input.png")
    target = int(np.argmax(probs)) if class_index is None else class_index
    report = {
        "run": run.id,
        "image": str(args.image),
        "predicted_class": class_names[int(np.argmax(probs))],
        "target_class": class_names[target],
        "probabilities": {c: float(p) for c, p in zip(class_names, probs)},
        "methods": {},
    }
    for result in results:
        entry = {"seconds": round(result.seconds, 4)}
        if result.error:
            entry["error"] = result.error
        else:
            np.save(out / f"{result.method}.npy", result.saliency)
            Image.fromarray(colorize(result.saliency)).save(out / f"{result.method}_heatmap.png")
            Image.fromarray(overlay(image, result.saliency, args.alpha)).save(out / f"{result.method}_overlay.png")
            entry.update({"map": f"{result.method}.npy", "overlay": f"{result.method}_overlay.png"})
        report["methods"][result.method] = entry
    (out / "explanation.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all(r.error is None for r in results) else 1
