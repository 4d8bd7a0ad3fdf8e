"""Plotly figures for the pages (pure functions of tables; no Streamlit)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def class_distribution(counts: pd.DataFrame) -> go.Figure:
    """Grouped bars: images per class, one colour per split."""
    long = counts.reset_index().melt(id_vars="class", var_name="split", value_name="images")
    fig = px.bar(long, x="class", y="images", color="split", barmode="group", text="images")
    fig.update_layout(height=360, margin=dict(t=30, b=10), legend_title_text="split")
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
    return fig


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


def roc_figure(curves: dict) -> go.Figure:
    fig = go.Figure()
    for name, curve in curves.items():
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {curve['auc']:.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"), name="chance"))
    fig.update_layout(
        xaxis_title="false positive rate", yaxis_title="true positive rate", height=420, margin=dict(t=30, b=10)
    )
    return fig


def pr_figure(curves: dict) -> go.Figure:
    fig = go.Figure()
    for name, curve in curves.items():
        fig.add_trace(
            go.Scatter(
                x=curve["recall"],
                y=curve["precision"],
                mode="lines",
                name=f"{name} (AP {curve['average_precision']:.3f})",
            )
        )
    fig.update_layout(xaxis_title="recall", yaxis_title="precision", height=420, margin=dict(t=30, b=10))
    return fig


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
    """One line per run for a history column (e.g. ``val_accuracy``)."""
    fig = go.Figure()
    for run_id, frame in history.groupby("run", sort=False):
        if column in frame:
            fig.add_trace(go.Scatter(x=frame["epoch"], y=frame[column], mode="lines+markers", name=run_id))
    fig.update_layout(title=column, xaxis_title="epoch", yaxis_title=column, height=340, margin=dict(t=40, b=10))
    return fig
