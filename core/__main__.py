"""Command line: ``python -m core {demo,dataset,train,import-model,evaluate,explain,audit,trust,serve,feedback,
embed,report,mlflow-log,bench} ...``
(``--help`` on each). The same functions back the dashboard."""

from __future__ import annotations

import argparse
import json
import os
import sys

from core.cli_serve import integer, number


def _add_workspace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help="workspace folder (default: $XAI_WORKSPACE or ./workspace)")


def _add_mlflow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mlflow",
        nargs="?",
        const="default",
        default=None,
        metavar="TRACKING_URI",
        help="log the run to MLflow: params, metrics (each epoch while training), artifacts, model. Alone: the "
        "workspace's own store, sqlite:///<workspace>/mlflow/mlflow.db; or sqlite:///PATH, file:///FOLDER, "
        "http://HOST:PORT",
    )


# ---- numbers checked when parsed: "argument --seed: must be 0 or more. Received: -5" --------------
# (defined in core.cli_serve, which every cli_* module can import without importing this one)


SEED = integer(0, 2**32 - 1)
FRACTION = number(0.0, 1.0)


def cmd_demo(args: argparse.Namespace) -> int:
    from core import runs

    workspace = runs.check_workspace(args.workspace, write=True)
    from core import demo

    if args.shortcut:
        from core import shortcut_demo

        run = shortcut_demo.create_shortcut_demo_run(workspace, progress=_print_epoch, epochs=args.epochs)
    else:
        run = demo.create_demo_run(workspace, progress=_print_epoch, epochs=args.epochs)
    print(_outcome(run, "Demo run"))
    print(f"Saved in {run.path}")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from core.data import scan_dataset
    from core.split_checks import split_problems, split_warnings

    index = scan_dataset(args.dir, args.val_fraction, args.test_fraction, seed=args.seed, group_split=args.group_split)
    summary = index.summary()
    summary["problems"], summary["warnings"] = split_problems(index), split_warnings(index)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['root']} ({summary['layout']} layout): {summary['images']} images, classes {summary['classes']}")
    for split, counts in summary["counts"].items():
        print(f"  {split:5s} " + ", ".join(f"{c}: {n}" for c, n in counts.items()))
    print(f"  sizes: {summary['image_sizes']}; colour modes: {summary['colour_modes']}")
    for item in summary["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")
    for message in summary["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    for message in summary["problems"]:
        print(f"cannot be trained and evaluated: {message}", file=sys.stderr)
    return 0


def _print_epoch(info: dict) -> None:
    if info.get("stage") == "warnings":
        for message in info.get("warnings", []):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        return
    if info.get("final"):
        print(
            f"epoch {info['epoch']}/{info['epochs']}: loss {info.get('loss', float('nan')):.4f} "
            f"accuracy {info.get('accuracy', float('nan')):.4f} val_loss {info.get('val_loss', float('nan')):.4f} "
            f"val_accuracy {info.get('val_accuracy', float('nan')):.4f} lr {info.get('learning_rate', float('nan')):.2e}",
            flush=True,
        )
    elif info.get("stage") != "training":
        print(info.get("message", info.get("stage")), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from core import runs

    workspace = runs.check_workspace(args.workspace, write=True)
    if not args.job:
        _check_mlflow(args, workspace)  # before TensorFlow is imported
        return _train(args, workspace)
    from core import jobs

    try:
        with jobs.reporting(workspace, args.job) as reporter:
            _check_mlflow(args, workspace)  # a refusal is the job's failure, shown on the Training page
            return _train(args, workspace, reporter)
    except jobs.JobCancelled as exc:
        print(str(exc))
        return 1


def _train(args: argparse.Namespace, workspace, reporter=None) -> int:
    from core import runs
    from core.training import TrainingConfig, train

    if args.logical_cpus:  # before TensorFlow runs any op
        from core.distribute import split_cpu

        split_cpu(args.logical_cpus)

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
        strategy=args.strategy,
        mixed_precision=args.mixed_precision,
        lr_rule=args.lr_rule,
        cache=args.cache,
    )

    def progress(info: dict) -> None:
        _print_epoch(info)
        if reporter is not None and info.get("stage") == "warnings":
            reporter.warnings(info.get("warnings", []))

    tracker = _tracker(args, workspace)
    try:
        run = train(
            workspace,
            args.data,
            config,
            name=args.name,
            progress=progress,
            on_run_created=reporter.run_created if reporter is not None else None,
            extra_callbacks=tracker.callbacks if tracker is not None else None,
            backup_dir=args.backup_dir,
        )
    finally:  # a failed or cancelled run is logged too, with that status (never raises)
        if tracker is not None:
            _print_tracking(tracker.finish())
    if run is None:  # a multi-worker cluster's worker other than the chief: the chief writes the run
        print("Worker finished; the chief wrote the run.")
        return 0
    if reporter is not None:
        reporter.finished(run)
    if run.status != runs.COMPLETE:
        print(f"Run {run.id} {run.status}: {run.meta.get('error')}")
        return 1
    print(_outcome(run))
    print(f"Saved in {run.path}")
    return 0


def _outcome(run, label: str = "Run") -> str:
    """``Run ID: test accuracy 0.9876, macro ROC AUC 0.9185 (52.3 s)`` for a complete run."""
    from core.text import score

    seconds = (run.meta.get("durations") or {}).get("total_seconds")
    took = f" ({seconds:.1f} s)" if isinstance(seconds, (int, float)) else ""
    return (
        f"{label} {run.id}: test accuracy {score(run.meta.get('test_accuracy'))}, "
        f"macro ROC AUC {score(run.meta.get('roc_auc_macro'))}{took}"
    )


def cmd_import_model(args: argparse.Namespace) -> int:
    from core import runs

    workspace = runs.check_workspace(args.workspace, write=True)
    _check_mlflow(args, workspace)  # before the model is loaded and evaluated
    from core.importing import import_run

    class_names = args.class_names.split(",") if args.class_names else None
    run = import_run(workspace, args.model, args.data, args.preprocess, class_names, name=args.name)
    print(_outcome(run))
    print(f"Saved in {run.path}")
    tracker = _tracker(args, workspace)
    if tracker is not None:
        _print_tracking(tracker.finish(run))
    return 0


def _check_mlflow(args: argparse.Namespace, workspace) -> None:
    """``--mlflow URI`` checked before any work (no MLflow imported, nothing created): a malformed URI, an
    unknown scheme or a local store whose folder is missing is an error; a server that does not answer
    only a warning once training runs (`core.tracking.RunTracker`)."""
    if args.mlflow is None:
        return
    from core import tracking_store

    try:
        tracking_store.check_uri(args.mlflow, workspace)
    except tracking_store.TrackingError as exc:
        raise ValueError(f"--mlflow: {exc}") from None


def _tracker(args: argparse.Namespace, workspace):
    """The MLflow tracker that ``--mlflow`` asks for (None without it); failures are printed as warnings."""
    if args.mlflow is None:
        return None
    from core import tracking

    warn = lambda message: print(f"warning: {message}", file=sys.stderr, flush=True)  # noqa: E731
    return tracking.RunTracker(args.mlflow, workspace, on_error=warn)


def _print_tracking(result: dict | None) -> None:
    if not result:
        return
    print(f"MLflow run {result['mlflow_run_id']} (experiment {result['experiment_id']}) at {result['tracking_uri']}")
    print(f"MLflow model: {result['model_logged_as']}")
    if result.get("ui_url"):
        print(f"Open it: {result['ui_url']}")
    elif result.get("ui_command"):
        print(f"Open it: {result['ui_command']}, then http://127.0.0.1:5000")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core import runs

    run = runs.find_run(runs.check_workspace(args.workspace, write=True), args.run)  # run.json is updated
    from core.finishing import evaluate

    metrics = evaluate(run)
    runs.update_run(run, test_accuracy=metrics["accuracy"], roc_auc_macro=metrics["roc_auc_macro"])
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"Run {run.id} on {metrics['n_samples']} test images:")
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("roc_auc_macro", "macro ROC AUC")):
        value = metrics["accuracy"] if key == "accuracy" else metrics.get(key)
        if key == "macro_f1":
            value = (metrics.get("macro_avg") or {}).get("f1")
        interval = (metrics.get("confidence_intervals") or {}).get(key)
        shown = "n/a" if value is None else f"{value:.4f}"
        if interval:
            shown += f"  (95% interval {interval[0]:.4f} - {interval[1]:.4f})"
        print(f"  {label:14s} {shown}")
    if metrics.get("ece") is not None:
        print(f"  {'ECE':14s} {metrics['ece']:.4f}  (15 bins, top label)")
        print(f"  {'Brier':14s} {metrics['brier']:.4f}")
    for name, values in metrics["per_class"].items():
        print(f"  {name}: precision {values['precision']:.3f} recall {values['recall']:.3f} f1 {values['f1']:.3f}")
    return 0


def cmd_bench(args: argparse.Namespace | None, rest: list[str]) -> int:
    if "--trust" in rest:
        from core import bench_trust

        return bench_trust.main([a for a in rest if a != "--trust"]) or 0
    if "--pipeline" in rest:
        from core import bench_pipeline

        return bench_pipeline.main([a for a in rest if a != "--pipeline"]) or 0
    from core import bench

    return bench.main(rest) or 0


def _add_scale(p: argparse.ArgumentParser) -> None:
    """Input pipeline, devices and precision of ``train`` (see core.distribute and core.multiworker)."""
    from core import sharding  # no TensorFlow
    from core.distribute import LR_RULES

    sharding.add_arguments(p, "training")  # --strategy and --logical-cpus, as audit and explain --images
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 on a GPU, bfloat16 on a CPU with bfloat16 instructions (else float32, with a warning); "
        "the output layer, the saved model and explanations stay float32",
    )
    p.add_argument(
        "--lr-rule",
        choices=LR_RULES,
        default="none",
        help="none: --lr is used as given for the global batch; linear: --lr x replicas",
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="keep the decoded, resized images on disk (<workspace>/cache/pipeline): epochs after the first skip decoding",
    )
    p.add_argument(
        "--backup-dir",
        default=None,
        help="multiworker: checkpoint folder every worker reads, for resuming after a restart "
        "(default <workspace>/backups/multiworker-<hash of the command>)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="Train, evaluate and explain Keras image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate the synthetic shapes dataset, train the demo model, save the run")
    _add_workspace(p)
    p.add_argument("--epochs", type=integer(1, 500), default=8)
    p.add_argument(
        "--shortcut",
        action="store_true",
        help="the demo with a planted shortcut (one class carries a bright tag in a corner), for the audit",
    )

    p = sub.add_parser("dataset", help="scan an image folder and print its summary")
    p.add_argument("dir")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the split (class layout)")
    p.add_argument("--val-fraction", type=FRACTION, default=0.15, help="share of each class for validation")
    p.add_argument("--test-fraction", type=FRACTION, default=0.15, help="share of each class for testing")
    p.add_argument(
        "--group-split",
        action="store_true",
        help="keep each sub-folder of a class (one patient, say) in a single split",
    )
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
    p.add_argument("--img-size", type=integer(16, 1024), default=224, help="input size in pixels (square)")
    p.add_argument("--epochs", type=integer(1, 10_000), default=10, help="epochs of the first phase")
    p.add_argument(
        "--batch-size",
        type=integer(1, 65_536),
        default=32,
        help="images per batch on each replica (device); the global batch is this x replicas (recorded in run.json)",
    )
    p.add_argument("--lr", type=number(0.0, 1.0, low_open=True), default=1e-3, help="learning rate of the first phase")
    p.add_argument("--augment", action="store_true", help="random flips, crops and zoom while training")
    p.add_argument(
        "--class-weights",
        choices=["always", "none", "auto"],
        default=None,
        help="always: weight classes by inverse frequency; none: never (default: only when imbalanced, "
        "largest class over 1.5x the smallest); auto: old name of always",
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=integer(0, 10_000),
        default=0,
        help="epochs of a second phase: top of the backbone unfrozen, learning rate / 10",
    )
    p.add_argument("--val-fraction", type=FRACTION, default=0.15)
    p.add_argument("--test-fraction", type=FRACTION, default=0.15)
    p.add_argument(
        "--group-split",
        action="store_true",
        help="keep each sub-folder of a class (one patient, say) in a single split",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--name", default=None, help="a name for the run")
    _add_scale(p)
    _add_mlflow(p)
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # set by the dashboard: the job record to update
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
    _add_mlflow(p)
    _add_workspace(p)

    p = sub.add_parser("evaluate", help="evaluate a run's model on its test split again")
    p.add_argument("run", help="run id (folder name under <workspace>/runs) or a run folder")
    p.add_argument("--json", action="store_true", help="print metrics.json (ECE, Brier, intervals included)")
    _add_workspace(p)

    from core import cli_explain, cli_serve, cli_trust

    cli_explain.add_parser(sub, _add_workspace)
    cli_trust.add_parsers(sub, _add_workspace)
    cli_serve.add_parsers(sub, _add_workspace)

    sub.add_parser(
        "bench",
        help="latency of each method vs tf-explain and vs a bare tf.function (--trust: the trust metrics' ratios; "
        "--pipeline: the input pipeline's images/s and training steps/s vs batches in memory)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit code: 0 done, 1 a run that did not complete, 2 an error the
    user can fix (printed as one line, never a traceback; ``XAI_DEBUG=1`` shows it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(None, argv[1:])
    args = build_parser().parse_args(argv)
    from core import cli_explain, cli_serve, cli_trust

    handlers = {
        "demo": cmd_demo,
        "dataset": cmd_dataset,
        "train": cmd_train,
        "import-model": cmd_import_model,
        "evaluate": cmd_evaluate,
        "explain": cli_explain.run,
        "audit": cli_trust.run_audit,
        "trust": cli_trust.run_trust,
        **cli_serve.HANDLERS,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, OSError, RuntimeError) as exc:  # our errors are ValueErrors with a clear message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line, not a traceback (XAI_DEBUG=1 shows it)
        if os.environ.get("XAI_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set XAI_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
