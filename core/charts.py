"""Plotly figures of tables (pure functions, no Streamlit): the pages and the HTML report draw with them."""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def class_distribution(counts: pd.DataFrame) -> go.Figure:
    """Grouped bars: images per class, one colour per split."""
    long = counts.reset_index().melt(id_vars="class", var_name="split", value_name="images")
    fig = px.bar(long, x="class", y="images", color="split", barmode="group", text="images")
    fig.update_layout(height=360, margin=dict(t=30, b=10), legend_title_text="split")
    return fig


def epoch_axis(fig: go.Figure, epochs) -> go.Figure:
    """Whole-number epoch ticks (never 1.5), at most about ten of them."""
    values = pd.to_numeric(pd.Series(list(epochs)), errors="coerce").dropna()
    if len(values):
        low, high = int(values.min()), int(values.max())
        fig.update_xaxes(tickmode="linear", tick0=low, dtick=max(1, math.ceil((high - low + 1) / 10)), tickformat="d")
    return fig


def training_curves(history: pd.DataFrame, metric: str) -> go.Figure:
    """Train vs validation per epoch for ``metric`` (``loss`` or ``accuracy``)."""
    fig = go.Figure()
    for column, label in ((metric, "train"), (f"val_{metric}", "validation")):
        if column in history:
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=label))
    fig.update_layout(
        title=metric.capitalize(), xaxis_title="epoch", yaxis_title=metric, height=340, margin=dict(t=40, b=10)
    )
    return epoch_axis(fig, history.get("epoch", []))


def confusion_heatmap(matrix: pd.DataFrame, normalized: bool) -> go.Figure:
    text = matrix.map(lambda v: f"{v:.2f}" if normalized else f"{int(v)}").to_numpy()
    fig = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(),
            x=list(matrix.columns),
            y=list(matrix.index),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalized else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis_title="predicted class",
        yaxis_title="true class",
        yaxis_autorange="reversed",
        height=420,
        margin=dict(t=30, b=10),
    )
    return fig


# Curves of different classes often lie on top of each other (a perfect classifier draws every ROC curve
# along the top-left corner): each class gets its own colour, dash style and marker symbol, and a line
# width that shrinks class by class, so every curve stays visible where they coincide.
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down")
COLOURS = px.colors.qualitative.D3


def curve_style(i: int) -> dict:
    """Plotly line and marker settings for the ``i``-th class curve (distinct colour, dash and marker)."""
    return dict(
        line=dict(color=COLOURS[i % len(COLOURS)], dash=DASHES[i % len(DASHES)], width=max(1.5, 5 - 1.2 * (i % 3))),
        marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=max(6, 11 - 2 * (i % 3)), color=COLOURS[i % len(COLOURS)]),
        mode="lines+markers",
    )


def _curves_layout(fig: go.Figure, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        xaxis_title=x_title,
        yaxis_title=y_title,
        xaxis_range=[-0.02, 1.02],
        yaxis_range=[-0.02, 1.05],
        height=440,
        margin=dict(t=30, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.18, x=0, font=dict(size=12)),
        hovermode="closest",
    )
    return fig


def roc_figure(curves: dict) -> go.Figure:
    """One-vs-rest ROC curves, one distinct style per class, the chance diagonal in grey."""
    fig = go.Figure()
    for i, (name, curve) in enumerate(curves.items()):
        fig.add_trace(
            go.Scatter(
                x=curve["fpr"],
                y=curve["tpr"],
                name=f"{name} (AUC {curve['auc']:.3f})",
                hovertemplate=f"{name}<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>",
                **curve_style(i),
            )
        )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey", width=1), name="chance")
    )
    return _curves_layout(fig, "false positive rate", "true positive rate")


def pr_figure(curves: dict) -> go.Figure:
    """One-vs-rest precision-recall curves with the same per-class styles as `roc_figure`."""
    fig = go.Figure()
    for i, (name, curve) in enumerate(curves.items()):
        fig.add_trace(
            go.Scatter(
                x=curve["recall"],
                y=curve["precision"],
                name=f"{name} (AP {curve['average_precision']:.3f})",
                hovertemplate=f"{name}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}<extra></extra>",
                **curve_style(i),
            )
        )
    return _curves_layout(fig, "recall", "precision")


def probabilities_bar(class_names, probs, highlight: int) -> go.Figure:
    colours = ["#e4572e" if i == highlight else "#4c78a8" for i in range(len(class_names))]
    fig = go.Figure(
        go.Bar(
            x=list(probs), y=list(class_names), orientation="h", marker_color=colours, text=[f"{p:.3f}" for p in probs]
        )
    )
    fig.update_layout(
        xaxis_range=[0, 1], xaxis_title="probability", height=60 + 40 * len(class_names), margin=dict(t=10, b=10)
    )
    return fig


def compare_curves(history: pd.DataFrame, column: str) -> go.Figure:
    """One line per run for a history column (e.g. ``val_accuracy``); the legend sits below the plot so
    that long run ids do not squeeze it."""
    fig = go.Figure()
    for run_id, frame in history.groupby("run", sort=False):
        if column in frame:
            fig.add_trace(go.Scatter(x=frame["epoch"], y=frame[column], mode="lines+markers", name=run_id))
    fig.update_layout(
        title=column,
        xaxis_title="epoch",
        yaxis_title=column,
        height=380,
        margin=dict(t=40, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.25, x=0),
    )
    return epoch_axis(fig, history.get("epoch", []))
