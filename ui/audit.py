"""Streamlit glue of the Audit page: saved results read once per file change, the long computations with a
progress bar, and the page's figures (plotly, pure functions of the saved results)."""

from __future__ import annotations

import contextlib

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import runs

REGION_LABELS = {
    "border": "border band",
    "top_left": "top-left corner",
    "top_right": "top-right corner",
    "bottom_left": "bottom-left corner",
    "bottom_right": "bottom-right corner",
    "centre": "centre",
}
"""The chart's and the table's name of each region: `core.audit.flag_text` names regions the same way."""


def _stamp(run: runs.Run, *names: str) -> tuple:
    stamps = []
    for name in names:
        try:
            stat = run.file(name).stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)


@st.cache_data(show_spinner=False, max_entries=16)
def _saved_audit(run_path: str, stamp: tuple):
    from core.audit import flag_text, load_audit

    report = load_audit(runs.read_run(run_path))
    for name, entry in (report or {}).get("classes", {}).items():
        with contextlib.suppress(KeyError, TypeError, ValueError):  # today's words, also for an older audit
            entry["text"] = flag_text(name, entry)
    return report


@st.cache_data(show_spinner=False, max_entries=16)
def _saved_trust(run_path: str, stamp: tuple):
    from core.trust_report import load_trust

    return load_trust(runs.read_run(run_path))


def saved_audit(run: runs.Run) -> dict | None:
    from core.audit import AUDIT_FILE, AUDIT_MAPS_FILE

    return _saved_audit(str(run.path), _stamp(run, AUDIT_FILE, AUDIT_MAPS_FILE))


def saved_trust(run: runs.Run) -> dict | None:
    from core.trust_report import TRUST_FILE, TRUST_MAPS_FILE

    return _saved_trust(str(run.path), _stamp(run, TRUST_FILE, TRUST_MAPS_FILE))


def _progress_bar(label: str):
    bar = st.progress(0.0, text=label)

    def update(fraction: float, message: str) -> None:
        bar.progress(float(min(max(fraction, 0.0), 1.0)), text=message)

    return bar, update


def run_audit(run: runs.Run, model, method: str, limit: int | None, agreement_images: int) -> None:
    """Runs the audit with a progress bar; the result is saved in the run (read back by `saved_audit`)."""
    from core.audit import audit_run

    bar, update = _progress_bar(f"Auditing with {method}…")
    audit_run(run, method, limit=limit, agreement_images=agreement_images, progress=update, model=model)
    bar.empty()


def run_trust(run: runs.Run, model, methods: list[str], limit: int, sanity_images: int, fast: bool) -> None:
    """Scores the methods with a progress bar; the result is saved in the run (read back by `saved_trust`)."""
    from core.audit import fast_params
    from core.trust_report import trust_report

    bar, update = _progress_bar("Scoring the methods…")
    params = fast_params(methods) if fast else None
    trust_report(run, methods, limit=limit, sanity_images=sanity_images, params=params, progress=update, model=model)
    bar.empty()


# ---- figures -------------------------------------------------------------------------------------


def shares_figure(report: dict) -> go.Figure:
    """Grouped bars: share of map mass per region, one bar per class, with a uniform map's share."""
    from core.audit import REGIONS

    labels = [REGION_LABELS[r] for r in REGIONS]
    fig = go.Figure()
    for name, entry in report["classes"].items():
        fig.add_trace(go.Bar(name=name, x=labels, y=[entry["shares"][r] for r in REGIONS]))
    fig.add_trace(
        go.Scatter(
            name="uniform map",
            x=labels,
            y=[report["uniform"][r] for r in REGIONS],
            mode="markers",
            marker=dict(symbol="line-ew-open", size=36, line=dict(width=3, color="black")),
        )
    )
    fig.update_layout(
        barmode="group",
        yaxis_title="share of map mass",
        yaxis_tickformat=".0%",
        height=360,
        margin=dict(t=30, b=10),
        legend_title_text="class",
    )
    return fig


def method_title(method: str) -> str:
    """A method's title (as on every other page), or its id when the registry no longer has it."""
    from core.explain import describe

    try:
        return describe(method)["title"]
    except (KeyError, ValueError):
        return method


def agreement_figure(agreement: dict) -> go.Figure:
    """The methods' mean rank correlation, each method named by its title."""
    matrix = np.asarray(agreement["matrix"], dtype=float)
    names = [method_title(m) for m in agreement["methods"]]
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=names,
            y=names,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            text=[[f"{v:.2f}" for v in row] for row in matrix],
            texttemplate="%{text}",
            hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(height=120 + 45 * len(names), margin=dict(t=30, b=10), yaxis_autorange="reversed")
    return fig


def curves_figure(entry: dict, reference: dict, fractions) -> go.Figure:
    """Mean deletion and insertion curves of one method, with the random map's as dotted lines."""
    fig = go.Figure()
    for key, name, colour in (("deletion", "deletion", "#d62728"), ("insertion", "insertion", "#1f77b4")):
        fig.add_trace(go.Scatter(x=fractions, y=entry[f"mean_{key}_curve"], name=name, line=dict(color=colour)))
        fig.add_trace(
            go.Scatter(
                x=fractions,
                y=reference[f"mean_{key}_curve"],
                name=f"{name}, random map",
                line=dict(color=colour, dash="dot"),
            )
        )
    fig.update_layout(
        xaxis_title="fraction of pixels changed",
        yaxis_title="probability",
        yaxis_range=[0, 1.02],
        height=260,
        margin=dict(t=20, b=10),
        legend=dict(font=dict(size=10)),
    )
    return fig


def heat(saliency) -> np.ndarray:
    """A map scaled by its maximum, as a heatmap image."""
    from core.visualize import colorize

    saliency = np.clip(np.nan_to_num(np.asarray(saliency, np.float32)), 0.0, None)
    peak = float(saliency.max()) if saliency.size else 0.0
    return colorize(saliency / peak if peak > 0 else saliency)
