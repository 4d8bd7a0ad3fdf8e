"""One self-contained HTML report of a run, to share: it opens offline, from disk, in any browser.

    python -m core report RUN_ID --out report.html

Sections: the run, the dataset (images per class and split), training curves, test metrics, confusion
matrix, ROC curves, a sample of test images per class explained by the chosen methods, and the run's
trust / audit results when it has them (``trust.json``, ``audit.json``). Nothing refers to the network:
plotly.js is inlined once (in the ``<script id="plotlyjs">``), images are ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import __version__, runs

DEFAULT_METHODS = ("gradcam", "vanilla_gradients", "occlusion")
"""A fast few: two gradient-based maps and one perturbation map."""
EXTRA_FILES = ("trust.json", "audit.json")
TILE_PX = 128

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2933; }
main { max-width: 1200px; margin: 0 auto; padding: 24px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #e4e7eb; padding-bottom: 4px; margin-top: 36px; }
.meta { color: #52606d; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { border: 1px solid #e4e7eb; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.figure { flex: 0 0 auto; }
.row { display: flex; gap: 8px; align-items: flex-start; margin: 8px 0 16px; flex-wrap: wrap; }
.tile { text-align: center; font-size: 12px; color: #52606d; }
.tile img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #cbd2d9; display: block; }
.wrong { color: #b42318; font-weight: 600; }
pre { background: #f5f7fa; padding: 12px; overflow: auto; max-height: 420px; font-size: 12px; }
"""


class ReportError(ValueError):
    """The run cannot be reported on (incomplete, missing files); the message says what is missing."""


def _data_uri(image: np.ndarray) -> str:
    from core.visualize import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def _figure_html(fig, div_id: str, width: int = 560) -> str:
    fig.update_layout(width=width, autosize=False)  # a fixed size: the same picture in every browser window
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.{digits}f}", na_rep="", border=0, escape=True)


def dataset_counts(run: runs.Run) -> pd.DataFrame:
    """Images per class (rows) and split (columns), from the run's splits.csv."""
    path = run.file("splits.csv")
    if not path.exists():
        return pd.DataFrame()
    splits = pd.read_csv(path)
    counts = pd.crosstab(splits["class_name"], splits["split"])
    counts = counts[[s for s in ("train", "val", "test") if s in counts.columns]]
    counts.index.name = "class"
    counts.columns.name = None
    return counts


def sample_images(predictions: pd.DataFrame, class_names: list[str], per_class: int) -> pd.DataFrame:
    """``per_class`` test images of each true class, misclassified ones first (the interesting ones)."""
    picked = []
    for name in class_names:
        rows = predictions[predictions["true_class"] == name]
        rows = pd.concat([rows[~rows["correct"]], rows[rows["correct"]]])
        picked.append(rows.head(per_class))
    return pd.concat(picked) if picked else predictions.head(0)


def explanation_rows(run: runs.Run, sample: pd.DataFrame, methods: list[str]) -> list[dict[str, Any]]:
    """For each sampled image: the image and one overlay per method (predicted class), as data URIs."""
    from core.data import load_image
    from core.explain import explain
    from core.model_import import load_run_model
    from core.models import input_size
    from core.visualize import overlay, resize_image

    model = load_run_model(run.path)
    size = input_size(model)
    images = np.stack([load_image(p, size) for p in sample["path"]])
    maps = {}
    for method in methods:
        maps[method] = explain(model, images, method, class_index=list(sample["pred_label"].astype(int)))
    rows = []
    for i, (_, record) in enumerate(sample.iterrows()):
        tiles = [_data_uri(resize_image(images[i], (TILE_PX, TILE_PX)))]
        tiles += [_data_uri(resize_image(overlay(images[i], maps[m][i], 0.5), (TILE_PX, TILE_PX))) for m in methods]
        rows.append(
            {
                "path": record["path"],
                "true": record["true_class"],
                "predicted": record["pred_class"],
                "confidence": float(record["confidence"]),
                "tiles": tiles,
            }
        )
    return rows


def _scalars(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(dotted key, value) for the numbers and short strings of a JSON document, at most 3 levels deep."""
    items = []
    if isinstance(obj, dict) and depth < 3:
        for key, value in obj.items():
            items += _scalars(value, f"{prefix}{key}.", depth + 1)
    elif isinstance(obj, (int, float, bool)) or (isinstance(obj, str) and len(obj) < 120):
        items.append((prefix.rstrip("."), obj))
    return items


def build_report(run: runs.Run, methods: list[str] | None = None, per_class: int = 2) -> str:
    """The report of a complete run as one HTML string (see the module docstring).

    Raises:
        ReportError: the run is not complete or lacks predictions/metrics; an unknown method.
    """
    import plotly.offline

    from core import charts, evaluation
    from core.explain import METHODS, describe

    if not run.is_complete:
        raise ReportError(f"Run {run.id} is {run.status}: only a complete run has the results a report shows.")
    methods = [m for m in (methods or DEFAULT_METHODS) if m in METHODS] if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ReportError(f"Unknown explanation methods {unknown}. Expected some of {list(METHODS)}")
    try:
        history = runs.load_history(run)
        predictions = runs.load_predictions(run)
        metrics = runs.load_metrics(run)
    except (runs.RunError, OSError) as exc:
        raise ReportError(f"Run {run.id} cannot be reported on: {exc}") from exc

    meta = run.meta
    esc = html.escape
    parts = [
        f"<h1>{esc(str(meta.get('name') or run.id))}</h1>",
        f"<p class='meta'>Run <code>{esc(run.id)}</code> · {esc(str(meta.get('architecture', '?')))} · input "
        f"{esc(str(meta.get('input_size')))} px · classes {esc(', '.join(run.class_names))} · created "
        f"{esc(str(meta.get('created_at', '?')))} · report made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by the XAI "
        f"dashboard {esc(__version__)}</p>",
    ]

    parts.append("<h2>Dataset</h2>")
    parts.append(f"<p class='meta'>Folder: <code>{esc(str(meta.get('dataset', '?')))}</code></p>")
    counts = dataset_counts(run)
    if not counts.empty:
        parts.append("<div class='grid'><div>" + _table(counts, 0) + "</div>")
        parts.append(
            f"<div class='figure'>{_figure_html(charts.class_distribution(counts), 'dataset_plot', 640)}</div></div>"
        )

    parts.append("<h2>Training</h2><div class='grid'>")
    for metric in ("loss", "accuracy"):
        if metric in history:
            fig = charts.training_curves(history, metric)
            parts.append(f"<div class='figure'>{_figure_html(fig, f'curve_{metric}')}</div>")
    parts.append("</div>")
    hyper = meta.get("hyperparameters") or {}
    if hyper:
        parts.append(_table(pd.DataFrame({"value": [str(v) for v in hyper.values()]}, index=list(hyper))))

    auc = metrics.get("roc_auc_macro")
    parts.append("<h2>Test metrics</h2>")
    parts.append(
        f"<p>Accuracy <b>{metrics['accuracy']:.3f}</b> · macro ROC AUC "
        f"<b>{'n/a' if auc is None else f'{auc:.3f}'}</b> · {metrics['n_samples']} test images</p>"
    )
    parts.append(_table(evaluation.classification_report_frame(metrics)))
    parts.append("<div class='grid'>")
    confusion = charts.confusion_heatmap(evaluation.confusion_matrix(predictions), False)
    parts.append(f"<div class='figure'><h3>Confusion matrix</h3>{_figure_html(confusion, 'confusion_plot')}</div>")
    roc = charts.roc_figure(evaluation.roc_curves(predictions))
    parts.append(f"<div class='figure'><h3>ROC curves (one-vs-rest)</h3>{_figure_html(roc, 'roc_plot')}</div>")
    parts.append("</div>")

    if methods and per_class > 0:
        sample = sample_images(predictions, run.class_names, per_class)
        titles = [describe(m)["title"] for m in methods]
        parts.append("<h2>Explanations</h2>")
        parts.append(
            f"<p class='meta'>{per_class} test image(s) per true class (misclassified first); each map explains "
            f"the predicted class. Methods: {esc(', '.join(titles))}.</p>"
        )
        for row in explanation_rows(run, sample, methods):
            mark = "" if row["true"] == row["predicted"] else " class='wrong'"
            labels = ["image", *titles]
            tiles = "".join(
                f"<div class='tile'><img src='{uri}' alt='{esc(label)}'>{esc(label)}</div>"
                for uri, label in zip(row["tiles"], labels, strict=True)
            )
            parts.append(
                f"<div><span{mark}>true {esc(row['true'])} → predicted {esc(row['predicted'])} "
                f"({row['confidence']:.2f})</span> <span class='meta'>{esc(Path(row['path']).name)}</span>"
                f"<div class='row'>{tiles}</div></div>"
            )

    for name in EXTRA_FILES:
        path = run.file(name)
        if not path.exists():
            continue
        parts.append(f"<h2>{esc(name.removesuffix('.json').capitalize())} results (<code>{esc(name)}</code>)</h2>")
        try:
            document = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            parts.append(f"<p class='wrong'>{esc(name)} cannot be read: {esc(str(exc))}</p>")
            continue
        scalars = _scalars(document)[:200]
        if scalars:
            frame = pd.DataFrame({"value": [v for _, v in scalars]}, index=[k for k, _ in scalars])
            parts.append(_table(frame, 4))
        text = json.dumps(document, indent=2)
        parts.append(f"<details><summary>Full {esc(name)}</summary><pre>{esc(text[:200_000])}</pre></details>")

    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>Report · {esc(str(meta.get('name') or run.id))}</title>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<style>{_CSS}</style>"
        f"<script id='plotlyjs' type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
        f"</head><body><main>{''.join(parts)}</main></body></html>\n"
    )


def write_report(run: runs.Run, out, methods: list[str] | None = None, per_class: int = 2) -> Path:
    """Builds the report and writes it atomically to ``out``; returns the path.

    Raises:
        ReportError: ``out`` is a folder (checked before the report is built).
    """
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out} is a folder: give a file path for the report")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(out, build_report(run, methods, per_class))
    return out
