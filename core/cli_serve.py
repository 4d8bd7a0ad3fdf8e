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
import math
import sys
from collections.abc import Callable
from pathlib import Path

from core.text import count

# ---- numbers checked when parsed: "argument --port: must be between 1 and 65535. Received: 0" --------
# (here, not in core.__main__, so that every cli_* module and core.__main__ can import them)


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number. Received: {text!r}") from None
        if value < low or (high is not None and value > high):
            expected = f"between {low} and {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {expected}. Received: {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: float, high: float, low_open: bool = False, high_open: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the interval (open or closed at each end)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number. Received: {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}. Received: {text}")
        return value

    parse.__name__ = "number"
    return parse


# ---- output paths checked before any work ---------------------------------------------------------


def checked_out_file(out: str | None, option: str = "--out") -> Path | None:
    """``--out`` naming a file to write: not an existing folder, and its parent folder must exist (a typo
    in a path is refused, not created).

    Raises:
        ValueError: ``--out /tmp/somedir is a folder: give a file path``, or a parent that is missing.
    """
    if not out:
        return None
    path = Path(out).expanduser()
    if path.is_dir():
        raise ValueError(f"{option} {out} is a folder: give a file path")
    _check_parent(path, out, option)
    return path


def checked_out_folder(out: str | None, option: str = "--out") -> Path | None:
    """``--out`` naming a folder to write into: not an existing file; the folder itself may be created,
    but its parent folder must exist."""
    if not out:
        return None
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {out} is a file: give a folder path")
    if not path.exists():
        _check_parent(path, out, option)
    return path


def _check_parent(path: Path, out: str, option: str) -> None:
    parent = path.resolve().parent
    if parent.is_dir():
        return
    if parent.exists():
        raise ValueError(f"{option} {out}: {parent} is a file, not a folder")
    raise ValueError(f"{option} {out}: the folder {parent} does not exist (create it first, or correct the path)")


def _add_workspace(parser):
    parser.add_argument("--workspace", default=None, help="workspace folder (default: $XAI_WORKSPACE or ./workspace)")


def add_parsers(sub, add_workspace=_add_workspace) -> None:
    p = sub.add_parser("serve", help="serve runs over a REST API (FastAPI + uvicorn): /predict, /explain, /feedback")
    p.add_argument("--run", action="append", default=[], help="run id to load at start (repeatable; default: newest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=integer(1, 65_535), default=8000)
    p.add_argument("--workers", type=integer(1, 256), default=1, help="worker processes (each loads the models)")
    p.add_argument(
        "--max-upload-mb", type=number(0.0, 10_000.0, low_open=True), default=10.0, help="largest upload accepted (MB)"
    )
    p.add_argument(
        "--max-concurrent-explanations",
        type=integer(1, 1024),
        default=2,
        help="explanations computed at once per worker; more wait in line",
    )
    add_workspace(p)

    p = sub.add_parser("feedback", help="list, count, export or delete users' flags")
    p.add_argument("action", choices=["list", "counts", "export-csv", "export-folder", "delete"])
    p.add_argument("--run", default=None, help="only this run's flags")
    p.add_argument("--type", default=None, dest="flag_type", help="only this flag type")
    p.add_argument("--out", default=None, help="export-csv: file (default: stdout); export-folder: folder")
    p.add_argument("--id", type=integer(1), default=None, help="delete: the flag's id")
    add_workspace(p)

    p = sub.add_parser("embed", help="penultimate-layer features of a run, projected with PCA and t-SNE (cached)")
    p.add_argument("run", help="run id")
    p.add_argument(
        "--train-sample", type=integer(0, 100_000), default=200, help="training images added to the test set"
    )
    p.add_argument("--force", action="store_true", help="compute again even if cached")
    add_workspace(p)

    p = sub.add_parser("report", help="one self-contained HTML report of a run (opens offline)")
    p.add_argument("run", help="run id")
    p.add_argument("--out", default=None, help="HTML file (default: <run>/report.html)")
    p.add_argument("--methods", default=None, help="comma-separated explanation methods (default: a fast few)")
    p.add_argument("--per-class", type=integer(0, 100), default=2, help="explained test images per class (0: none)")
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
    from core import runs

    workspace = runs.check_workspace(args.workspace)
    from core import serve

    config = serve.ServeConfig(
        workspace=str(workspace),
        run_ids=list(args.run),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_concurrent_explanations=args.max_concurrent_explanations,
    )
    serve.serve(config, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_feedback(args) -> int:
    from core import feedback, runs

    writes = args.action == "delete" or (args.action == "export-folder" and not args.out)
    workspace = runs.check_workspace(args.workspace, write=writes)
    if args.action == "delete" and args.id is None:
        raise ValueError("Expected --id FLAG_ID for delete.")
    if args.action == "export-csv":
        checked_out_file(args.out)
    elif args.action == "export-folder":
        checked_out_folder(args.out)
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
        if not feedback.delete_flag(workspace, args.id):
            print(f"No flag with id {args.id}.", file=sys.stderr)
            return 1
        print(f"Deleted flag {args.id}.")
    return 0


def cmd_embed(args) -> int:
    from core import runs

    run = runs.find_run(runs.check_workspace(args.workspace, write=True), args.run)
    from core import embeddings

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
    from core import runs

    given = checked_out_file(args.out)
    run = runs.find_run(runs.check_workspace(args.workspace, write=given is None), args.run)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    out = given if given is not None else run.path / "report.html"
    from core import report

    report.write_report(run, out, methods=methods, per_class=args.per_class)
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")
    return 0


def cmd_mlflow_log(args) -> int:
    from core import runs, tracking_store

    workspace = runs.check_workspace(args.workspace, write=True)  # run.json records the MLflow run
    tracking_store.check_uri(args.uri, workspace)  # before MLflow is imported: a bad URI fails at once
    run = runs.find_run(workspace, args.run)
    from core import tracking

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
