"""``python -m core audit`` and ``python -m core trust``: their arguments and what they do.

    python -m core audit RUN_ID [--method gradcam] [--limit N] [--json] [--strategy mirrored --logical-cpus 2]
    python -m core trust RUN_ID [--methods gradcam,occlusion] [--limit N] [--json]

Both save their results in the run (``audit.json`` + ``audit_maps.npz``; ``trust.json`` + ``trust_maps.npz``).
Also runnable on its own: ``python -m core.cli_trust audit RUN_ID``.
"""

from __future__ import annotations

import argparse
import json
import sys

from core import sharding  # no TensorFlow


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, received {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive whole number, received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive whole number, received {text!r}")
    return value


def add_parsers(sub, add_workspace) -> None:
    """Adds the ``audit`` and ``trust`` sub-commands to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "audit", help="what the model looks at per class over the test set; flags border/corner shortcuts"
    )
    p.add_argument("run", help="run id (folder name under <workspace>/runs) or a run folder")
    p.add_argument("--method", default="gradcam", help="explanation method (default gradcam)")
    p.add_argument("--limit", type=_positive, default=None, help="audit only N test images (classes in turn)")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument(
        "--agreement-images",
        type=_non_negative,
        default=8,
        help="images for the method-agreement matrix (0: skip it)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sharding.add_arguments(p, "audit")
    add_workspace(p)
    p.set_defaults(handler=run_audit)

    p = sub.add_parser(
        "trust", help="per method: deletion/insertion AUC, randomisation, localisation; saves trust.json"
    )
    p.add_argument("run", help="run id (folder name under <workspace>/runs) or a run folder")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every method)")
    p.add_argument("--limit", type=_positive, default=32, help="test images to score (default 32)")
    p.add_argument("--steps", type=_positive, default=20, help="deletion/insertion steps K (default 20)")
    p.add_argument(
        "--sanity-images", type=_non_negative, default=4, help="images for the randomisation checks (0: skip)"
    )
    p.add_argument("--fast", action="store_true", help="each method's cheap, rough setting (a quick look)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_workspace(p)
    p.set_defaults(handler=run_trust)


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def run_audit(args) -> int:
    """The ``audit`` command: prints the flags per class (or JSON) and saves audit.json in the run. With
    ``--strategy multiworker`` every worker runs it and only the chief saves and prints the audit."""
    from core import runs

    sharding.check_options(args.strategy)  # before importing TensorFlow: a missing TF_CONFIG fails fast
    run = runs.find_run(runs.check_workspace(args.workspace, write=True), args.run)  # audit.json is saved in it
    from core.audit import audit_run, summary_json
    from core.explain import METHODS  # importing runs no TensorFlow op: the CPU can still be split

    if args.method not in METHODS:
        raise ValueError(f"Unknown method {args.method!r}. Expected one of {list(METHODS)}")
    placement = sharding.make_placement(args.strategy, args.logical_cpus)  # before TensorFlow runs any op
    report = audit_run(
        run,
        args.method,
        limit=args.limit,
        batch_size=args.batch_size,
        agreement_images=args.agreement_images,
        progress=None if args.json else _print_progress,
        placement=placement,
    )
    if report is None:
        print(f"Worker {placement.worker_index} finished; the chief wrote {run.path / 'audit.json'}.")
        return 0
    if args.json:
        print(json.dumps(summary_json(report), indent=2, default=float))
        return 0
    print(f"Audit of run {run.id} with {args.method} on {report['images']} test images ({report['seconds']} s)")
    where = report["distribution"]
    if where["replicas"] > 1 or where["workers"] > 1:
        print(f"  computed by {where['strategy']}: {where['replicas']} replica(s) on {where['workers']} worker(s)")
    for entry in report["classes"].values():
        print(f"  {entry['text']}")
        print(
            f"    hiding the {entry['hidden_region'].replace('_', ' ')}: accuracy {entry['accuracy_before']:.0%} -> "
            f"{entry['accuracy_after']:.0%}, mean probability {entry['probability_before']:.2f} -> "
            f"{entry['probability_after']:.2f}"
        )
    agreement = report.get("agreement")
    if agreement and agreement["methods"]:
        print(f"Method agreement (mean Spearman over {agreement['images']} images):")
        width = max(len(m) for m in agreement["methods"])
        for name, row in zip(agreement["methods"], agreement["matrix"]):
            print(f"  {name:{width}s} " + " ".join(f"{v:6.2f}" for v in row))
        for name, error in agreement["errors"].items():
            print(f"  {name}: {error}")
    print(f"Saved in {run.path / 'audit.json'}")
    return 0


def run_trust(args) -> int:
    """The ``trust`` command: prints the per-method table (or JSON) and saves trust.json in the run."""
    from core import runs

    run = runs.find_run(runs.check_workspace(args.workspace, write=True), args.run)  # trust.json is saved in it
    from core.audit import fast_params
    from core.explain import METHODS
    from core.trust_report import table_rows, trust_report

    methods = None if not args.methods else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}. Expected some of {list(METHODS)}")
    report = trust_report(
        run,
        methods,
        params=fast_params(methods or METHODS) if args.fast else None,
        limit=args.limit,
        steps=args.steps,
        sanity_images=args.sanity_images,
        progress=None if args.json else _print_progress,
    )
    report.pop("strips", None)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return 0
    print(f"Trust of run {run.id} on {report['images']} test images (explained class: predicted)")
    reference = report["random_reference"]
    print(f"  random map: deletion AUC {reference['deletion_auc']:.3f}, insertion AUC {reference['insertion_auc']:.3f}")
    for row in table_rows(report):
        if "error" in row:
            print(f"  {row['method']}: {row['error']}")
            continue
        line = (
            f"  {row['method']}: deletion AUC {row['deletion AUC (lower better)']:.3f}, insertion AUC "
            f"{row['insertion AUC (higher better)']:.3f}"
        )
        if row["randomisation"]:
            line += f", randomisation {row['randomisation']} (Spearman {row['final Spearman']:.2f})"
            line += ", class-sensitive" if row["class-sensitive"] else ", not class-sensitive"
        if row["pointing game"] is not None:
            line += (
                f", pointing {row['pointing game']:.2f}, energy {row['energy pointing']:.2f}, "
                f"top-k IoU {row['top-k IoU']:.2f}"
            )
        print(line)
    if report["ranking"]:
        print("  ranked by insertion - deletion: " + ", ".join(r["method"] for r in report["ranking"]))
    print(f"Saved in {run.path / 'trust.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.cli_trust", description="Audit a run; score its methods.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_workspace(p):
        p.add_argument("--workspace", default=None, help="workspace folder (default: $XAI_WORKSPACE or ./workspace)")

    add_parsers(sub, add_workspace)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
