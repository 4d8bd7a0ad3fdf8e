"""The planted-shortcut variant of the demo: one class carries a small bright tag in one corner.

The tag is in every image of that class, in every split, so a model can score well by looking at the
corner instead of the shape. The dataset audit (`core.audit`) must flag that class and that corner, with an
accuracy drop when the corner is hidden; on the clean demo it must flag nothing.

    python -m core.shortcut_demo [--tag-class circle] [--corner top_left] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import runs, shapes

SHORTCUT_NAME = "demo-shapes-shortcut"
SHORTCUT_DATASET = "demo_shapes_shortcut"
DEFAULT_TAG_CLASS = "circle"
DEFAULT_CORNER = "top_left"


def shortcut_dataset(
    root,
    per_class: int = 500,
    image_size: int = 64,
    seed: int = 0,
    tag_class: str = DEFAULT_TAG_CLASS,
    corner: str = DEFAULT_CORNER,
) -> Path:
    """Writes the shapes dataset with ``tag_class`` tagged in ``corner`` (and its masks) under ``root``."""
    root = Path(root)
    shapes.generate_shapes_dataset(
        root, per_class=per_class, image_size=image_size, seed=seed, tag_class=tag_class, tag_corner=corner
    )
    runs.atomic_write_json(
        root / "dataset.json",
        {
            "name": SHORTCUT_DATASET,
            "classes": list(shapes.DEMO_CLASSES),
            "per_class": per_class,
            "image_size": image_size,
            "seed": seed,
            "shortcut": {"class": tag_class, "corner": corner, "tag_fraction": shapes.TAG_FRACTION},
            "masks": "masks/<split>/<class>/<file>: 255 on the object, 0 elsewhere (the tag is not in it)",
        },
    )
    return root


def create_shortcut_demo_run(
    workspace,
    progress=None,
    epochs: int = 8,
    per_class: int = 500,
    image_size: int = 64,
    seed: int = 0,
    tag_class: str = DEFAULT_TAG_CLASS,
    corner: str = DEFAULT_CORNER,
) -> runs.Run:
    """Generates the shortcut dataset in ``<workspace>/datasets/demo_shapes_shortcut`` (once) and trains the
    demo's compact CNN on it; the run records the planted shortcut under ``shortcut``."""
    from core.training import TrainingConfig, train

    dataset = Path(workspace) / "datasets" / SHORTCUT_DATASET
    marker = dataset / "dataset.json"
    if not marker.exists():
        if progress:
            progress({"stage": "dataset", "message": f"Generating the shapes dataset, {tag_class} tagged in {corner}"})
        shortcut_dataset(dataset, per_class, image_size, seed, tag_class, corner)
    config = TrainingConfig(
        arch="compact_cnn", image_size=image_size, epochs=epochs, batch_size=16, learning_rate=2e-3, seed=seed
    )
    shortcut = {"class": tag_class, "corner": corner}
    return train(workspace, dataset, config, name=SHORTCUT_NAME, progress=progress, extra_meta={"shortcut": shortcut})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.shortcut_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tag-class", default=DEFAULT_TAG_CLASS, choices=shapes.DEMO_CLASSES)
    parser.add_argument("--corner", default=DEFAULT_CORNER, choices=shapes.CORNERS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--workspace", default=None)
    args = parser.parse_args(argv)
    run = create_shortcut_demo_run(
        runs.workspace_dir(args.workspace),
        progress=lambda info: info.get("final") and print(f"epoch {info['epoch']}/{info['epochs']}", flush=True),
        epochs=args.epochs,
        per_class=args.per_class,
        tag_class=args.tag_class,
        corner=args.corner,
    )
    print(f"Shortcut demo run {run.id} ({run.status}): test accuracy {run.meta.get('test_accuracy')}")
    print(f"Audit it: python -m core audit {run.id}")
    return 0 if run.is_complete else 1


if __name__ == "__main__":
    sys.exit(main())
