"""Command line: ``python -m core {demo,dataset,train,import-model,evaluate,explain,bench} ...``
(``--help`` on each). The same functions back the dashboard."""

from __future__ import annotations

import argparse
import json
import sys


def _add_workspace(parser):
    parser.add_argument("--workspace", default=None, help="workspace folder (default: $XAI_WORKSPACE or ./workspace)")


def cmd_demo(args) -> int:
    from core import demo, runs

    workspace = runs.workspace_dir(args.workspace)

    run = demo.create_demo_run(workspace, progress=_print_epoch, epochs=args.epochs)
    print(
        f"Demo run {run.id}: test accuracy {run.meta.get('test_accuracy'):.4f}, "
        f"macro ROC AUC {run.meta.get('roc_auc_macro'):.4f}, {run.meta.get('durations')}"
    )
    print(f"Saved in {run.path}")
    return 0


def cmd_dataset(args) -> int:
    from core.data import scan_dataset

    summary = scan_dataset(args.dir, seed=args.seed).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['root']} ({summary['layout']} layout): {summary['images']} images, classes {summary['classes']}")
    for split, counts in summary["counts"].items():
        print(f"  {split:5s} " + ", ".join(f"{c}: {n}" for c, n in counts.items()))
    print(f"  sizes: {summary['image_sizes']}; colour modes: {summary['colour_modes']}")
    for item in summary["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")
    return 0


def _print_epoch(info):
    if info.get("final"):
        print(
            f"epoch {info['epoch']}/{info['epochs']}: loss {info.get('loss', float('nan')):.4f} "
            f"accuracy {info.get('accuracy', float('nan')):.4f} val_loss {info.get('val_loss', float('nan')):.4f} "
            f"val_accuracy {info.get('val_accuracy', float('nan')):.4f} lr {info.get('learning_rate', float('nan')):.2e}",
            flush=True,
        )
    elif info.get("stage") != "training":
        print(info.get("message", info.get("stage")), flush=True)


def cmd_train(args) -> int:
    from core import runs
    from core.training import TrainingConfig, train

    config = TrainingConfig(
        arch=args.arch,
        image_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        weights=None if args.weights == "none" else args.weights,
        augment=args.augment,
        class_weights=args.class_weights,
        fine_tune_epochs=args.fine_tune_epochs,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        group_split=args.group_split,
    )
    run = train(runs.workspace_dir(args.workspace), args.data, config, name=args.name, progress=_print_epoch)
    if run.status != runs.COMPLETE:
        print(f"Run {run.id} {run.status}: {run.meta.get('error')}")
        return 1
    print(f"Run {run.id}: test accuracy {run.meta['test_accuracy']:.4f}, macro ROC AUC {run.meta['roc_auc_macro']}")
    print(f"Saved in {run.path}")
    return 0


def cmd_import_model(args) -> int:
    from core import runs
    from core.model_import import import_run

    class_names = args.class_names.split(",") if args.class_names else None
    run = import_run(
        runs.workspace_dir(args.workspace), args.model, args.data, args.preprocess, class_names, name=args.name
    )
    print(f"Run {run.id}: test accuracy {run.meta['test_accuracy']:.4f}, macro ROC AUC {run.meta['roc_auc_macro']}")
    print(f"Saved in {run.path}")
    return 0


def cmd_evaluate(args) -> int:
    from core import runs
    from core.training import evaluate

    run = runs.find_run(runs.workspace_dir(args.workspace), args.run)
    metrics = evaluate(run)
    runs.update_run(run, test_accuracy=metrics["accuracy"], roc_auc_macro=metrics["roc_auc_macro"])
    print(json.dumps({k: metrics[k] for k in ("accuracy", "roc_auc_macro", "per_class")}, indent=2))
    return 0


def cmd_bench(args, rest) -> int:
    from core import bench

    return bench.main(rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="Train, evaluate and explain Keras image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate the synthetic shapes dataset, train the demo model, save the run")
    _add_workspace(p)
    p.add_argument("--epochs", type=int, default=8)

    p = sub.add_parser("dataset", help="scan an image folder and print its summary")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    from core.catalog import ARCHITECTURE_NAMES, PREPROCESSING_DESCRIPTIONS, PREPROCESSING_MODES  # no TensorFlow

    p = sub.add_parser("train", help="train a model on an image folder (transfer learning or from scratch)")
    p.add_argument("--data", required=True, help="image folder: DIR/<class>/... or DIR/{train,val,test}/<class>/...")
    p.add_argument("--arch", default="efficientnetb0", choices=ARCHITECTURE_NAMES)
    p.add_argument(
        "--weights",
        default="imagenet",
        choices=["imagenet", "none"],
        help="imagenet: frozen pre-trained backbone, then fine-tuning; none: from scratch",
    )
    p.add_argument("--img-size", type=int, default=224, help="input size in pixels (square)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the first phase")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the first phase")
    p.add_argument("--augment", action="store_true", help="random flips, crops and zoom while training")
    p.add_argument(
        "--class-weights",
        choices=["auto", "none"],
        default=None,
        help="auto: always weight classes by inverse frequency (default: only when imbalanced)",
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=0,
        help="epochs of a second phase: top of the backbone unfrozen, learning rate / 10",
    )
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument(
        "--group-split",
        action="store_true",
        help="keep each sub-folder of a class (one patient, say) in a single split",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="a name for the run")
    _add_workspace(p)

    p = sub.add_parser("import-model", help="create a run from a model you trained (.keras, .h5, SavedModel)")
    p.add_argument("model", help=".keras or .h5 file, or a SavedModel folder")
    p.add_argument("--data", required=True, help="image folder with a test split (or split here)")
    p.add_argument(
        "--preprocess",
        required=True,
        choices=PREPROCESSING_MODES,
        help="what the model expects: " + "; ".join(f"{k}: {v}" for k, v in PREPROCESSING_DESCRIPTIONS.items()),
    )
    p.add_argument("--class-names", default=None, help="comma-separated, in the model's output order")
    p.add_argument("--name", default=None)
    _add_workspace(p)

    p = sub.add_parser("evaluate", help="evaluate a run's model on its test split again")
    p.add_argument("run", help="run id (folder name under <workspace>/runs) or a run folder")
    _add_workspace(p)

    from core import cli_explain

    cli_explain.add_parser(sub, _add_workspace)

    sub.add_parser("bench", help="latency of each method vs tf-explain and vs a bare tf.function", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(None, argv[1:])
    args = build_parser().parse_args(argv)
    from core import cli_explain

    handlers = {
        "demo": cmd_demo,
        "dataset": cmd_dataset,
        "train": cmd_train,
        "import-model": cmd_import_model,
        "evaluate": cmd_evaluate,
        "explain": cli_explain.run,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, OSError, RuntimeError) as exc:  # our errors are ValueErrors with a clear message
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
