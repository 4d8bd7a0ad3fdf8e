"""Streamlit glue for the Embeddings page: the cached feature space, the scatter, the picked image with its
Grad-CAM, and the hand-over to the Explainer.

The feature space is read from the run's on-disk cache (`core.embeddings.load_cached`, wrapped in
``st.cache_data`` keyed by the run folder, the model's stamp and the cache's stamp); it is computed only
when the user presses the button. A click on a point (``st.plotly_chart(on_select="rerun")``) and the
image selectbox below the chart pick the same image; the selectbox alone is enough without a mouse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from core import embeddings, runs
from ui import common

PROJECTION = "emb_projection"
SPLITS = "emb_splits"
TRAIN_SAMPLE = "emb_train_sample"
COMPUTE = "emb_compute"
RECOMPUTE = "emb_recompute"
CHART = "emb_chart"
IMAGE = "emb_image"
LAST_CLICK = "emb_last_click"  # the point last clicked, so a click is applied once
OPEN = "emb_open"
UNSAVED = "emb_unsaved"  # a result that could not be cached on disk (read-only run folder)

PROJECTION_TITLES = {"tsne": "t-SNE", "pca": "PCA"}
SPLIT_CHOICES = {"both": "Test and train sample", "test": "Test only", "train": "Train sample only"}
DISPLAY_SIDE = 256  # the picked image and its Grad-CAM are shown at least this large
EXPLAINER_PAGE = "pages/4_Explainer.py"


# ---- the feature space ----------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=16)
def _cached(run_path: str, model_stamp: tuple, cache_stamp: tuple, train_sample: int):
    return embeddings.load_cached(runs.read_run(run_path), train_sample)


def _stamps(run: runs.Run) -> tuple[tuple, tuple]:
    return run.model_stamp or (), tuple(embeddings.cache_stamp(run) or ())


def _compute(run: runs.Run, train_sample: int, force: bool) -> embeddings.Embeddings | None:
    """Computes under a spinner with a progress bar; shows the error and returns None when it fails."""
    from core.models import ModelError

    bar = st.progress(0.0, text="Loading the model…")
    stages = {"features": "Reading the features", "pca": "PCA", "tsne": "t-SNE (a few seconds)"}

    def progress(stage: str, fraction: float) -> None:
        weight = {"features": (0.0, 0.6), "pca": (0.6, 0.05), "tsne": (0.65, 0.35)}[stage]
        bar.progress(min(1.0, weight[0] + weight[1] * fraction), text=f"{stages[stage]}…")

    try:
        with st.spinner("Computing the feature space: features, PCA, t-SNE…"):
            result = embeddings.compute_embeddings(
                run, train_sample=train_sample, force=force, model=common.model(run), progress=progress
            )
    except (ValueError, OSError, ModelError) as exc:  # EmbeddingError, RunError, ImageError: all say why
        bar.empty()
        st.error(f"The feature space cannot be computed: {exc}")
        return None
    bar.empty()
    if result.info.get("cache_error"):
        st.session_state[UNSAVED] = (run.id, _stamps(run)[0], train_sample, result)
    return result


def feature_space(run: runs.Run) -> embeddings.Embeddings:
    """The run's feature space from the cache, or a button that computes it; stops the page until there is one."""
    train_sample = int(st.session_state.get(TRAIN_SAMPLE, embeddings.DEFAULT_TRAIN_SAMPLE))
    model_stamp, cache_stamp = _stamps(run)
    result = _cached(str(run.path), model_stamp, cache_stamp, train_sample)
    unsaved = st.session_state.get(UNSAVED)
    if result is None and unsaved and unsaved[:3] == (run.id, model_stamp, train_sample):
        result = unsaved[3]
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    right.number_input(
        "Training images added",
        0,
        5000,
        embeddings.DEFAULT_TRAIN_SAMPLE,
        50,
        key=TRAIN_SAMPLE,
        help="A seeded sample of the training split, shown beside the whole test split (0: test only).",
    )
    if result is None:
        left.info(
            "The feature space of this run has not been computed yet (or its model changed). It is computed once "
            "and kept with the run; t-SNE takes a few seconds."
        )
        clicked = st.button("Compute the feature space", key=COMPUTE, type="primary", icon=":material/scatter_plot:")
        if clicked and _compute(run, train_sample, force=False) is not None:
            st.rerun()  # drawn again from the cache, without the button
        st.stop()
    left.caption(embeddings.summary(result.info))
    again = st.button("Compute again", key=RECOMPUTE, help="Ignore the cache and compute the features again.")
    if again and _compute(run, train_sample, force=True) is not None:
        st.rerun()
    _skipped_warning(result.info)
    return result


def _skipped_warning(info: dict) -> None:
    lines = [f"- {p}" for p in info.get("missing_examples", [])] + [
        f"- {text}" for text in info.get("unreadable_examples", [])
    ]
    skipped = int(info.get("missing", 0)) + int(info.get("unreadable", 0))
    if skipped:
        st.warning(
            f"{skipped} image(s) of the run were skipped ({info.get('missing', 0)} no longer exist, "
            f"{info.get('unreadable', 0)} cannot be read), for example:\n" + "\n".join(lines)
        )


# ---- the scatter ----------------------------------------------------------------------------------


def controls() -> tuple[str, str]:
    """(projection, splits shown): "tsne" or "pca", and a key of `SPLIT_CHOICES`."""
    left, right = st.columns([1, 2])
    projection = left.radio(
        "Projection",
        list(PROJECTION_TITLES),
        format_func=PROJECTION_TITLES.get,
        horizontal=True,
        key=PROJECTION,
        help="t-SNE keeps neighbours together (distances between clusters mean little); PCA is a linear view "
        "that keeps the largest variations.",
    )
    splits = right.radio("Images", list(SPLIT_CHOICES), format_func=SPLIT_CHOICES.get, horizontal=True, key=SPLITS)
    return projection, splits


def shown(frame: pd.DataFrame, splits: str) -> pd.DataFrame:
    return frame if splits == "both" else frame[frame["split"] == splits]


def class_colours(classes: list[str]) -> dict[str, str]:
    palette = qualitative.Plotly if len(classes) <= 10 else qualitative.Alphabet
    return {name: palette[i % len(palette)] for i, name in enumerate(classes)}


def scatter(frame: pd.DataFrame, projection: str, classes: list[str], info: dict, selected: str | None) -> go.Figure:
    """Points coloured by true class; misclassified ones drawn as a cross, the training sample fainter, the
    picked image ringed. Every point carries its path in ``customdata``."""
    x_name, y_name = embeddings.PROJECTIONS[projection]
    colours = class_colours(classes + sorted(set(frame["true_class"]) - set(classes)))
    fig = go.Figure()
    for name, colour in colours.items():
        for split in ("test", "train"):
            for correct in (True, False):
                part = frame[(frame["true_class"] == name) & (frame["split"] == split) & (frame["correct"] == correct)]
                if part.empty:
                    continue
                label = name + ("" if split == "test" else " · train") + ("" if correct else " · misclassified")
                fig.add_trace(
                    go.Scatter(
                        x=part[x_name],
                        y=part[y_name],
                        mode="markers",
                        name=label,
                        legendgroup=name,
                        customdata=np.stack([part["path"], part["pred_class"], part["confidence"]], axis=1),
                        text=[Path(p).name for p in part["path"]],
                        marker=dict(
                            color=colour,
                            symbol="circle" if correct else "x",
                            size=8 if correct else 11,
                            opacity=0.9 if split == "test" else 0.4,
                            line=dict(width=1.5 if not correct else 0, color="#222"),
                        ),
                        hovertemplate=f"<b>%{{text}}</b><br>true {name} · predicted %{{customdata[1]}} "
                        f"(%{{customdata[2]:.1%}})<br>{split}<extra></extra>",
                    )
                )
    if selected is not None and selected in set(frame["path"]):
        row = frame[frame["path"] == selected].iloc[0]
        fig.add_trace(
            go.Scatter(
                x=[row[x_name]],
                y=[row[y_name]],
                mode="markers",
                name="picked image",
                customdata=[[row["path"], row["pred_class"], row["confidence"]]],
                marker=dict(symbol="circle-open", size=22, color="#111", line=dict(width=2.5)),
                hoverinfo="skip",
            )
        )
    if projection == "pca":
        ratio = info.get("pca_explained_variance") or [0.0, 0.0]
        axes = (f"PC 1 ({ratio[0]:.0%} of the variance)", f"PC 2 ({ratio[1]:.0%})")
    else:
        axes = ("t-SNE 1", "t-SNE 2")
    fig.update_layout(
        height=560,
        margin=dict(t=30, b=10, l=10, r=10),
        xaxis_title=axes[0],
        yaxis_title=axes[1],
        legend=dict(title="true class", itemsizing="constant"),
        clickmode="event+select",
        dragmode="pan",
    )
    return fig


def _clicked_path(state) -> str | None:
    """The path of the first point in a plotly selection state (None: nothing selected)."""
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if data:
            return str(data[0])
    return None


def _default_image(frame: pd.DataFrame) -> str:
    wrong = frame[~frame["correct"]]
    return str((wrong if len(wrong) else frame).iloc[0]["path"])


def chart_and_picker(run: runs.Run, result: embeddings.Embeddings, projection: str, splits: str) -> str | None:
    """The scatter (click a point) and an image selectbox (works without a mouse); returns the picked path."""
    frame = shown(result.frame, splits)
    if frame.empty:
        st.info("No image in this selection: the run has no training sample here. Show the test images instead.")
        return None
    options = list(frame.sort_values(["correct", "split"], ascending=[True, True], kind="stable")["path"])
    clicked = _clicked_path(st.session_state.get(CHART))
    if clicked is None:
        st.session_state[LAST_CLICK] = None
    elif clicked != st.session_state.get(LAST_CLICK):
        st.session_state[LAST_CLICK] = clicked
        if clicked in options:
            st.session_state[IMAGE] = clicked
    if st.session_state.get(IMAGE) not in options:
        st.session_state[IMAGE] = _default_image(frame)
    figure = scatter(frame, projection, run.class_names, result.info, st.session_state[IMAGE])
    st.plotly_chart(figure, key=CHART, on_select="rerun", selection_mode="points", width="stretch")
    rows = frame.set_index("path")
    labels = {
        path: f"{Path(path).name} · {rows.at[path, 'split']} · true {rows.at[path, 'true_class']} · predicted "
        f"{rows.at[path, 'pred_class']}" + ("" if rows.at[path, "correct"] else " · misclassified")
        for path in options
    }
    return st.selectbox(
        "Image (or click a point)",
        options,
        format_func=labels.get,
        key=IMAGE,
        help="Misclassified images first. Clicking a point in the chart picks it here.",
    )


# ---- the picked image -----------------------------------------------------------------------------


def _file_stamp(path: str) -> tuple:
    try:
        stat = Path(path).stat()
    except OSError:
        return ()
    return (stat.st_mtime_ns, stat.st_size)


@st.cache_data(show_spinner="Grad-CAM…", max_entries=64)
def _gradcam(run_path: str, model_stamp: tuple, image_path: str, image_stamp: tuple):
    """(the picture to show, the Grad-CAM overlay on it) for the predicted class of one image."""
    from core.data import load_image, load_thumbnail
    from core.explain import explain
    from core.models import input_size
    from core.visualize import overlay_on, resize_image

    net = common.model(runs.read_run(run_path))
    image = load_image(image_path, input_size(net))
    saliency = explain(net, image[None], "gradcam")[0]
    picture = load_thumbnail(image_path, 2 * DISPLAY_SIDE)
    height, width = picture.shape[:2]
    if max(height, width) < DISPLAY_SIDE:  # small images are enlarged so the map can be seen
        scale = DISPLAY_SIDE / max(height, width)
        picture = resize_image(picture, (round(height * scale), round(width * scale)))
    return picture, overlay_on(picture, saliency, 0.5, "jet")


def show_picked(run: runs.Run, frame: pd.DataFrame, path: str | None) -> None:
    """The picked image with its prediction and Grad-CAM, and a button that opens it in the Explainer."""
    if path is None:
        return
    row = frame[frame["path"] == path].iloc[0]
    from core.data import ImageError
    from core.explain import ExplanationError

    picture_column, map_column, text_column = st.columns([1, 1, 1.2])
    try:
        picture, blended = _gradcam(str(run.path), _stamps(run)[0], path, _file_stamp(path))
    except (ImageError, OSError) as exc:
        st.error(f"This image cannot be read any more: {exc}")
        return
    except ExplanationError as exc:
        picture_column.info(f"No Grad-CAM for this model: {exc}")
        picture, blended = None, None
    if picture is not None:
        picture_column.image(picture, caption=Path(path).name, width=DISPLAY_SIDE)
        map_column.image(blended, caption=f"Grad-CAM for the predicted class, {row['pred_class']}", width=DISPLAY_SIDE)
    verdict = ":green[correct]" if row["correct"] else ":red[misclassified]"
    text_column.markdown(
        f"**Predicted {row['pred_class']}** ({row['confidence']:.1%}) · true class **{row['true_class']}** · "
        f"{verdict}  \n{row['split']} split"
    )
    text_column.caption(f"`{path}`")
    if text_column.button("Open in the Explainer", key=OPEN, icon=":material/visibility:"):
        st.session_state[common.EXPLAIN_REQUEST] = {
            "run": run.id,
            "path": path,
            "classes": [row["true_class"], row["pred_class"]],
        }
        st.switch_page(EXPLAINER_PAGE)
