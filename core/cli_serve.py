"""Command line for serving, feedback, embeddings, the report and MLflow tracking:

    python -m core serve [--run RUN_ID] [--host 127.0.0.1] [--port 8000] [--workers N]
    python -m core feedback {list,counts,export-csv,export-folder,delete} ...
    python -m core embed RUN_ID
    python -m core report RUN_ID --out report.html
    python -m core mlflow-log RUN_ID [--uri URI]

`add_parsers(sub, add_workspace)` adds the sub-commands to ``python -m core``'s parser; `HANDLERS` maps each
command to its handler (``handler(args) -> exit code``). ``python -m core.cli_serve ...`` runs them alone.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.text import count


def _add_workspace(parser):
    parser.add_argument("--workspace", default=None, help="workspace folder (default: $XAI_WORKSPACE or ./workspace)")


def add_parsers(sub, add_workspace=_add_workspace) -> None:
    p = sub.add_parser("serve", help="serve runs over a REST API (FastAPI + uvicorn): /predict, /explain, /feedback")
    p.add_argument("--run", action="append", default=[], help="run id to load at start (repeatable; default: newest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each loads the models)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (MB)")
    p.add_argument(
        "--max-concurrent-explanations",
        type=int,
        default=2,
        help="explanations computed at once per worker; more wait in line",
    )
    add_workspace(p)

    p = sub.add_parser("feedback", help="list, count, export or delete users' flags")
    p.add_argument("action", choices=["list", "counts", "export-csv", "export-folder", "delete"])
    p.add_argument("--run", default=None, help="only this run's flags")
    p.add_argument("--type", default=None, dest="flag_type", help="only this flag type")
    p.add_argument("--out", default=None, help="export-csv: file (default: stdout); export-folder: folder")
    p.add_argument("--id", type=int, default=None, help="delete: the flag's id")
    add_workspace(p)

    p = sub.add_parser("embed", help="penultimate-layer features of a run, projected with PCA and t-SNE (cached)")
    p.add_argument("run", help="run id")
    p.add_argument("--train-sample", type=int, default=200, help="training images added to the test set")
    p.add_argument("--force", action="store_true", help="compute again even if cached")
    add_workspace(p)

    p = sub.add_parser("report", help="one self-contained HTML report of a run (opens offline)")
    p.add_argument("run", help="run id")
    p.add_argument("--out", default=None, help="HTML file (default: <run>/report.html)")
    p.add_argument("--methods", default=None, help="comma-separated explanation methods (default: a fast few)")
    p.add_argument("--per-class", type=int, default=2, help="explained test images per class")
    add_workspace(p)

    p = sub.add_parser("mlflow-log", help="log a finished run to MLflow (params, metrics, artifacts, model)")
    p.add_argument("run", help="run id")
    p.add_argument(
        "--uri",
        default=None,
        help="tracking URI (default: the workspace's own store, sqlite:///<workspace>/mlflow/mlflow.db)",
    )
    p.add_argument("--experiment", default=None, help="experiment name (default: xai-dashboard)")
    add_workspace(p)


def cmd_serve(args) -> int:
    from core import runs, serve

    config = serve.ServeConfig(
        workspace=str(runs.workspace_dir(args.workspace)),
        run_ids=list(args.run),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_concurrent_explanations=args.max_concurrent_explanations,
    )
    serve.serve(config, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_feedback(args) -> int:
    from core import feedback, runs

    workspace = runs.workspace_dir(args.workspace)
    flags = lambda: feedback.list_flags(workspace, run_id=args.run, flag_type=args.flag_type)  # noqa: E731
    if args.action == "list":
        print(json.dumps(flags(), indent=2))
    elif args.action == "counts":
        print(json.dumps(feedback.counts(workspace, args.run), indent=2))
    elif args.action == "export-csv":
        text = feedback.export_csv(flags())
        if args.out:
            runs.atomic_write_text(args.out, text)
            print(f"Wrote {args.out}")
        else:
            sys.stdout.write(text)
    elif args.action == "export-folder":
        out = args.out or feedback.default_export_dir(workspace)
        result = feedback.export_image_folder(workspace, out, flags())
        print(
            f"Exported {count(sum(result['per_class'].values()), 'image')} to {result['folder']}: {result['per_class']}"
        )
        print(
            f"Skipped {result['skipped']} flags without a correct class. Train on it: python -m core train "
            f"--data {result['folder']}"
        )
    elif args.action == "delete":
        if args.id is None:
            raise ValueError("Expected --id FLAG_ID for delete.")
        if not feedback.delete_flag(workspace, args.id):
            print(f"No flag with id {args.id}.", file=sys.stderr)
            return 1
        print(f"Deleted flag {args.id}.")
    return 0


def cmd_embed(args) -> int:
    from core import embeddings, runs

    run = runs.find_run(runs.workspace_dir(args.workspace), args.run)
    result = embeddings.compute_embeddings(run, train_sample=args.train_sample, force=args.force)
    frame = result.frame
    print(
        f"Run {run.id}: {len(frame)} images ({(frame['split'] == 'test').sum()} test), features from layer "
        f"{result.info['layer']} ({result.info['dimensions']} dimensions); "
        f"{'read from cache' if result.info.get('cached') else 'computed'} in {result.info['seconds']:.1f} s"
    )
    where = embeddings.cache_paths(run)[0]
    print(f"Read from {where}" if result.info.get("cached") else f"Saved in {where}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from core import report, runs

    run = runs.find_run(runs.workspace_dir(args.workspace), args.run)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    out = Path(args.out) if args.out else run.path / "report.html"
    report.write_report(run, out, methods=methods, per_class=args.per_class)
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")
    return 0


def cmd_mlflow_log(args) -> int:
    from core import runs, tracking

    workspace = runs.workspace_dir(args.workspace)
    run = runs.find_run(workspace, args.run)
    result = tracking.log_run(run, tracking_uri=args.uri, workspace=workspace, experiment=args.experiment)
    print(f"Logged run {run.id} to MLflow run {result['mlflow_run_id']} at {result['tracking_uri']}")
    print(f"Model: {result['model_logged_as']}" + (f" ({result['model_note']})" if result.get("model_note") else ""))
    return 0


HANDLERS = {
    "serve": cmd_serve,
    "feedback": cmd_feedback,
    "embed": cmd_embed,
    "report": cmd_report,
    "mlflow-log": cmd_mlflow_log,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.cli_serve")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub, _add_workspace)
    args = parser.parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
