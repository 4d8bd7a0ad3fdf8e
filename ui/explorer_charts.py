"""Plotly figures of the evaluation explorer (pure functions of numbers; no Streamlit)."""

from __future__ import annotations

import plotly.graph_objects as go

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")


def line_styles(n: int) -> list[dict]:
    """n distinct line styles (dash and marker), so that curves lying on top of each other stay visible."""
    return [
        {"line": dict(dash=_DASHES[i % len(_DASHES)]), "marker": dict(symbol=_SYMBOLS[i % len(_SYMBOLS)])}
        for i in range(n)
    ]


def reliability_diagram(before: dict, after: dict | None = None) -> go.Figure:
    """Top-label reliability: accuracy vs mean confidence per bin (bars show the count), the diagonal is
    perfect calibration. ``before``/``after`` are `core.calibration.reliability` results."""
    fig = go.Figure()
    centres = [(b["low"] + b["high"]) / 2 for b in before["bins"]]
    fig.add_trace(
        go.Bar(
            x=centres,
            y=[b["count"] for b in before["bins"]],
            name="images per bin",
            yaxis="y2",
            marker_color="rgba(128,128,128,0.25)",
            width=1 / before["n_bins"],
            hovertemplate="confidence %{x:.2f}<br>%{y} images<extra></extra>",
        )
    )
    for result, label, colour in ((before, "model", "#4c78a8"), (after, "after temperature scaling", "#e4572e")):
        if result is None:
            continue
        filled = [b for b in result["bins"] if b["count"]]
        fig.add_trace(
            go.Scatter(
                x=[b["confidence"] for b in filled],
                y=[b["accuracy"] for b in filled],
                mode="lines+markers",
                name=f"{label} (ECE {result['ece']:.3f})",
                line=dict(color=colour),
                text=[f"{b['count']} images" for b in filled],
                hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{text}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"), name="perfect calibration")
    )
    fig.update_layout(
        xaxis=dict(title="confidence (top-label probability)", range=[0, 1]),
        yaxis=dict(title="accuracy", range=[0, 1.02]),
        yaxis2=dict(title="images", overlaying="y", side="right", showgrid=False),
        height=420,
        margin=dict(t=30, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def per_class_reliability(curves: dict) -> go.Figure:
    fig = go.Figure()
    for (name, curve), style in zip(curves.items(), line_styles(len(curves))):
        fig.add_trace(
            go.Scatter(
                x=curve["mean_predicted"], y=curve["fraction_positive"], mode="lines+markers", name=name, **style
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"), name="perfect"))
    fig.update_layout(
        xaxis_title="mean predicted probability of the class",
        yaxis_title="fraction that belong to it",
        height=380,
        margin=dict(t=30, b=10),
    )
    return fig


def operating_point_on_curves(roc: dict | None, pr: dict | None, point: dict) -> tuple[go.Figure, go.Figure]:
    """ROC and precision-recall curves of one class with the chosen threshold marked on both."""
    roc_fig, pr_fig = go.Figure(), go.Figure()
    if roc is not None:
        roc_fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"ROC (AUC {roc['auc']:.3f})"))
    if point["specificity"] is not None and point["sensitivity"] is not None:
        roc_fig.add_trace(
            go.Scatter(
                x=[1 - point["specificity"]],
                y=[point["sensitivity"]],
                mode="markers",
                marker=dict(size=14, color="#e4572e", symbol="x"),
                name=f"threshold {point['threshold']:.3f}",
            )
        )
    roc_fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"), name="chance"))
    roc_fig.update_layout(
        xaxis_title="1 - specificity",
        yaxis_title="sensitivity",
        height=400,
        margin=dict(t=30, b=10),
        legend=dict(orientation="h", y=-0.3),
        showlegend=True,
    )
    if pr is not None:
        pr_fig.add_trace(
            go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=f"PR (AP {pr['average_precision']:.3f})")
        )
    if point["precision"] is not None and point["sensitivity"] is not None:
        pr_fig.add_trace(
            go.Scatter(
                x=[point["sensitivity"]],
                y=[point["precision"]],
                mode="markers",
                marker=dict(size=14, color="#e4572e", symbol="x"),
                name=f"threshold {point['threshold']:.3f}",
            )
        )
    pr_fig.update_layout(
        xaxis_title="recall (sensitivity)",
        yaxis_title="precision",
        height=400,
        margin=dict(t=30, b=10),
        legend=dict(orientation="h", y=-0.3),
        showlegend=True,
    )
    return roc_fig, pr_fig


def intervals(rows: list[tuple[str, float, list | None]]) -> go.Figure:
    """Point estimates with their 95% intervals as horizontal error bars: rows of (name, value, [low, high])."""
    rows = [r for r in rows if r[1] is not None]
    fig = go.Figure(
        go.Scatter(
            x=[r[1] for r in rows],
            y=[r[0] for r in rows],
            mode="markers",
            marker=dict(size=10, color="#4c78a8"),
            error_x=dict(
                type="data",
                symmetric=False,
                array=[(r[2][1] - r[1]) if r[2] else 0 for r in rows],
                arrayminus=[(r[1] - r[2][0]) if r[2] else 0 for r in rows],
            ),
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis=dict(title="value with 95% bootstrap interval", range=[0, 1.02]),
        yaxis=dict(autorange="reversed"),
        height=80 + 32 * len(rows),
        margin=dict(t=10, b=10),
    )
    return fig
