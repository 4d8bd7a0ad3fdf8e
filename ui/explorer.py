"""Streamlit sections of the evaluation explorer (calibration, thresholds, intervals, groups, mistakes).

Each ``render_*`` function draws one section of the Evaluation page from a run and its predictions table;
the numbers come from cached calls into `core.explorer` and friends.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import calibration, error_analysis, explorer, runs
from ui import explorer_charts
from ui.common import EXPLAIN_REQUEST


@st.cache_data(show_spinner="Bootstrapping the test set…", max_entries=16)
def _extended(run_path: str, stamp: tuple, predictions: pd.DataFrame) -> dict:
    return explorer.extended_metrics(predictions)


def _stamp(run: runs.Run, name: str) -> tuple:
    try:
        stat = run.file(name).stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def extended_metrics(run: runs.Run, predictions: pd.DataFrame, saved: dict) -> dict:
    """The run's saved extended metrics, or computed now (older runs) and cached."""
    if "confidence_intervals" in saved and "ece" in saved:
        return saved
    return _extended(str(run.path), _stamp(run, runs.PREDICTIONS_FILE), predictions)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval_text(interval) -> str:
    return "n/a" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def render_uncertainty(run: runs.Run, predictions: pd.DataFrame, saved: dict) -> None:
    """Headline metrics as intervals, top-k accuracy, per-class recall intervals."""
    extra = extended_metrics(run, predictions, saved)
    if not extra:
        st.info("No test predictions to bootstrap.")
        return
    ci = extra["confidence_intervals"]
    point = {
        "accuracy": saved.get("accuracy"),
        "macro_f1": (saved.get("macro_avg") or {}).get("f1"),
        "roc_auc_macro": saved.get("roc_auc_macro"),
    }
    cols = st.columns(3)
    for col, (key, label) in zip(
        cols, (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"), ("roc_auc_macro", "Macro ROC AUC"))
    ):
        col.metric(
            label, _fmt(point[key]), f"95% interval {_interval_text(ci.get(key))}", delta_color="off", delta_arrow="off"
        )
    rows = [
        (f"recall {name}", (saved.get("per_class") or {}).get(name, {}).get("recall"), interval)
        for name, interval in extra["recall_intervals"].items()
    ]
    rows = [
        ("accuracy", point["accuracy"], ci.get("accuracy")),
        ("macro F1", point["macro_f1"], ci.get("macro_f1")),
        ("macro ROC AUC", point["roc_auc_macro"], ci.get("roc_auc_macro")),
    ] + rows
    st.plotly_chart(explorer_charts.intervals(rows), key="interval_chart")
    settings = extra.get("bootstrap", {})
    st.caption(
        f"Percentile bootstrap over the {saved.get('n_samples', len(predictions))} test images: "
        f"{settings.get('resamples', 1000)} resamples, seed {settings.get('seed', 0)}. A wide interval means the "
        "test set is too small to tell these numbers apart."
    )
    if extra.get("top_k_accuracy"):
        st.dataframe(
            pd.DataFrame(
                {"k": list(extra["top_k_accuracy"]), "top-k accuracy": list(extra["top_k_accuracy"].values())}
            ),
            hide_index=True,
            key="top_k_table",
        )


def render_calibration(run: runs.Run, predictions: pd.DataFrame) -> None:
    """Reliability diagram, ECE and Brier score, temperature scaling fitted on the validation split."""
    names, y_true, probs = explorer.arrays(predictions)
    if not len(y_true):
        return
    before = calibration.reliability(probs, y_true)
    saved_fit = explorer.load_calibration(run)
    try:
        fit = saved_fit or explorer.fit_run_temperature(run)
        fit_error = None
    except explorer.ExplorerError as exc:
        fit, fit_error = None, str(exc)
    after = None
    if fit is not None:
        after = calibration.reliability(calibration.apply_temperature(probs, fit["temperature"]), y_true)
    cols = st.columns(3)
    cols[0].metric(
        "ECE (15 bins)",
        f"{before['ece']:.3f}",
        help="Expected calibration error: the mean gap between confidence and accuracy, weighted by bin size. 0 is perfectly calibrated.",
    )
    cols[1].metric(
        "Brier score",
        f"{calibration.brier_score(probs, y_true):.3f}",
        help="Mean squared distance between the probability vector and the one-hot label: 0 is perfect, 2 the worst.",
    )
    if after is not None:
        change = after["ece"] - before["ece"]
        cols[2].metric(
            f"ECE after temperature scaling (T = {fit['temperature']:.2f})",
            f"{after['ece']:.3f}",
            f"{change:+.3f}",
            delta_color="inverse",  # lower is better: a fall shows green
            help=(
                "ECE once every logit is divided by the temperature T fitted on the validation split; the change "
                "below is after minus before (lower is better)."
            ),
        )
    st.plotly_chart(explorer_charts.reliability_diagram(before, after), key="reliability_diagram")
    if fit_error:
        st.info(f"Temperature scaling is not available: {fit_error}")
    elif fit is not None:
        st.caption(
            f"Temperature fitted on the validation split ({fit['n_images']} images): validation log-loss "
            f"{max(0.0, fit['log_loss_before']):.3f} -> {max(0.0, fit['log_loss_after']):.3f}. The model is never changed."
        )
        if saved_fit:
            st.success(f"Calibrated probabilities (T = {saved_fit['temperature']:.2f}) are saved with this run.")
            if st.button("Stop using the temperature", key="clear_calibration"):
                explorer.clear_calibration(run)
                st.rerun()
        elif st.button("Save this temperature with the run", key="save_calibration"):
            explorer.save_calibration(run, fit)
            st.rerun()
    with st.expander("Reliability per class (one vs rest)"):
        st.plotly_chart(
            explorer_charts.per_class_reliability(calibration.per_class_reliability(probs, y_true, names)),
            key="per_class_reliability",
        )


def render_thresholds(run: runs.Run, predictions: pd.DataFrame) -> None:
    """A threshold slider for one class vs the rest, its confusion counts and rates, presets, saving."""
    names, _, _ = explorer.arrays(predictions)
    saved = explorer.load_threshold(run)
    default_class = saved["class"] if saved else names[-1 if len(names) == 2 else 0]
    positive = st.selectbox(
        "Positive class", names, index=names.index(default_class), key="threshold_class",
        help="The class whose probability is thresholded; every other class counts as negative.",
    )  # fmt: skip
    presets = explorer.threshold_view(predictions, positive, 0.5)["presets"]
    preset_key = f"threshold_value_{positive}"
    if preset_key not in st.session_state:
        st.session_state[preset_key] = float(saved["threshold"]) if saved and saved["class"] == positive else 0.5
    if presets:
        buttons = st.columns(len(presets))
        for column, (label, value) in zip(buttons, presets.items()):
            shown = "Youden's J" if label == "youden" else label
            if column.button(f"{shown}: {value:.3f}", key=f"preset_{label}"):
                st.session_state[preset_key] = float(value)
    threshold = st.slider("Threshold", 0.0, 1.0, step=0.001, format="%.3f", key=preset_key)
    view = explorer.threshold_view(predictions, positive, threshold)
    point = view["point"]
    counts = pd.DataFrame(
        [[point["tp"], point["fn"]], [point["fp"], point["tn"]]],
        index=pd.Index([f"true {positive}", "true other"], name=None),
        columns=[f"predicted {positive}", "predicted other"],
    )
    left, right = st.columns(2)
    left.dataframe(counts, key="threshold_counts")
    rates = {k: point[k] for k in ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy")}
    right.dataframe(
        pd.DataFrame(
            {"value": [_fmt(v) for v in rates.values()]},
            index=["sensitivity (recall)", "specificity", "precision (PPV)", "NPV", "F1", "accuracy"],
        ),
        key="threshold_rates",
    )
    roc, pr = explorer.class_curves(predictions, positive)
    roc_fig, pr_fig = explorer_charts.operating_point_on_curves(roc, pr, point)
    a, b = st.columns(2)
    a.plotly_chart(roc_fig, key="threshold_roc")
    b.plotly_chart(pr_fig, key="threshold_pr")
    if saved and saved["class"] == positive and abs(saved["threshold"] - threshold) < 1e-9:
        st.success(f"Saved: every page predicts **{positive}** when its probability is at least {threshold:.3f}.")
        if st.button("Go back to the most probable class", key="clear_threshold"):
            explorer.clear_threshold(run)
            st.rerun()
    elif st.button(f"Use this threshold for {positive} on every page", key="save_threshold"):
        explorer.save_threshold(run, positive, threshold)
        st.rerun()


@st.cache_data(show_spinner=False, max_entries=512)
def _thumbnail_uri(path: str) -> str | None:
    """A small PNG of the image as a data URI for a table cell; None when it cannot be read."""
    import base64
    import io

    from PIL import Image

    from core.data import ImageError, load_thumbnail

    try:
        buffer = io.BytesIO()
        Image.fromarray(load_thumbnail(path, 64)).save(buffer, format="PNG")
    except (ImageError, OSError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_groups(predictions: pd.DataFrame) -> None:
    table = error_analysis.metrics_per_group(predictions)
    if table.empty:
        st.caption(
            "No image lies in a sub-folder of its class folder, so there are no groups (patients, hospitals, "
            "cameras) to compare."
        )
        return
    st.dataframe(table.style.format(precision=3), hide_index=True, key="groups_table")


def render_mistakes(run: runs.Run, predictions: pd.DataFrame) -> None:
    """The most confidently wrong and least confident correct test images; one opens in the Explainer."""
    wrong, unsure = error_analysis.ranked_mistakes(predictions)
    for title, table, key in (
        ("Most confident mistakes", wrong, "mistakes_wrong"),
        ("Least confident correct predictions", unsure, "mistakes_unsure"),
    ):
        st.markdown(f"**{title}**")
        if table.empty:
            st.caption("None.")
            continue
        shown = table.assign(
            thumbnail=table["path"].map(_thumbnail_uri), image=table["path"].map(lambda p: p.rsplit("/", 1)[-1])
        )[["thumbnail", "image", "true_class", "pred_class", "confidence", "p_true"]]
        event = st.dataframe(
            shown,
            hide_index=True,
            on_select="rerun",
            selection_mode="single-row",
            key=key,
            column_config={
                "thumbnail": st.column_config.ImageColumn("", width="small"),
                "true_class": "true class",
                "pred_class": "predicted class",
                "confidence": st.column_config.NumberColumn("confidence", format="%.3f"),
                "p_true": st.column_config.NumberColumn("probability of the true class", format="%.3f"),
            },
        )
        rows = event.selection.rows if event is not None else []
        if rows:
            chosen = table.iloc[rows[0]]
            st.caption(f"`{chosen['path']}`")
            if st.button("Open in the Explainer (true vs predicted class)", key=f"{key}_open"):
                st.session_state[EXPLAIN_REQUEST] = {
                    "run": run.id,
                    "path": chosen["path"],
                    "classes": [chosen["true_class"], chosen["pred_class"]],
                }
                st.switch_page("pages/4_Explainer.py")


@st.cache_data(show_spinner="Bootstrapping both runs…", max_entries=16)
def _paired(a_path: str, a_stamp: tuple, b_path: str, b_stamp: tuple, a: pd.DataFrame, b: pd.DataFrame) -> dict:
    return explorer.paired_comparison(a, b)


def render_comparison(run: runs.Run, predictions: pd.DataFrame, load_predictions) -> None:
    """Paired bootstrap against another complete run with the same classes: is the difference real?"""
    others = [r for r in runs.list_runs(run.path.parent.parent) if r.is_complete and r.id != run.id]
    others = [r for r in others if r.class_names == run.class_names]
    if not others:
        st.caption("No other complete run with the same classes to compare with.")
        return
    by_id = {r.id: r for r in others}
    other_id = st.selectbox("Compare with run", list(by_id), key="paired_run")
    other = by_id[other_id]
    try:
        result = _paired(
            str(run.path),
            _stamp(run, runs.PREDICTIONS_FILE),
            str(other.path),
            _stamp(other, runs.PREDICTIONS_FILE),
            predictions,
            load_predictions(other),
        )
    except (explorer.ExplorerError, runs.RunError) as exc:
        st.info(str(exc))
        return
    rows = []
    for key, label in (("accuracy", "accuracy"), ("roc_auc_macro", "macro ROC AUC")):
        entry = result[key]
        if entry["b_better"]:
            verdict = f"{other_id} is better"
        elif entry["a_better"]:
            verdict = f"{run.id} is better"
        else:
            verdict = "no difference shown (the interval contains 0)"
        rows.append(
            {
                "metric": label,
                f"{other_id} - {run.id}": entry["difference"],
                "95% interval": _interval_text(entry["interval"]),
                "verdict": verdict,
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="paired_table")
    st.caption(
        f"Paired bootstrap over the {result['shared_images']} test images both runs were evaluated on "
        f"({result['resamples']} resamples, seed {result['seed']})."
    )


@st.cache_data(show_spinner="Explaining the cell's images…", max_entries=32)
def _cell_maps(run_path: str, stamp: int, paths: tuple, true_index: int, predicted_index: int, methods: tuple):
    from core import audit
    from ui.common import _model

    return audit.confusion_cell_maps(_model(run_path, stamp), list(paths), true_index, predicted_index, list(methods))


@st.cache_data(show_spinner=False, max_entries=512)
def _thumbnail(path: str, side: int):
    """The image scaled to fit ``side`` pixels (uint8), or None when it cannot be read."""
    from core.data import ImageError, load_thumbnail

    try:
        return load_thumbnail(path, side)
    except (ImageError, OSError):
        return None


def drilldown_keys(run: runs.Run) -> tuple[str, str]:
    """The widget keys of the drill-down's cell (true class, predicted class): one pair per run, so another
    run starts at its own largest confusion instead of the previous run's cell."""
    return f"drill_true_{run.id}", f"drill_pred_{run.id}"


def render_drilldown(run: runs.Run, predictions: pd.DataFrame, limit: int = 8, thumbnail: int = 96) -> None:
    """Choose a confusion-matrix cell (true A, predicted B): its images straight away (the ``limit`` most
    confident), and on request each with its maps for A and for B (all pictures drawn at the same width)."""
    from core.explain import METHODS, describe
    from core.visualize import overlay
    from ui.common import model_stamp

    names, _, _ = explorer.arrays(predictions)
    cells = predictions.groupby(["true_class", "pred_class"]).size()
    off_diagonal = cells[[a != b for a, b in cells.index]]
    default_true, default_pred = off_diagonal.idxmax() if len(off_diagonal) else cells.idxmax()
    true_key, pred_key = drilldown_keys(run)
    left, right, third = st.columns(3)
    true_class = left.selectbox("True class", names, index=names.index(default_true), key=true_key)
    pred_class = right.selectbox("Predicted class", names, index=names.index(default_pred), key=pred_key)
    methods = third.multiselect(
        "Methods", list(METHODS), default=["gradcam"], format_func=lambda m: describe(m)["title"], key="drill_methods"
    )
    cell = predictions[(predictions["true_class"] == true_class) & (predictions["pred_class"] == pred_class)]
    st.caption(
        f"{len(cell)} test image(s) of **{true_class}** predicted **{pred_class}**"
        + (f"; the {limit} most confident are shown" if len(cell) > limit else "")
    )
    if cell.empty:
        return
    cell = cell.sort_values("confidence", ascending=False).head(limit)
    explain = st.toggle(
        "Explain these images",
        key="drill_explain",
        disabled=not methods,
        help="Adds each method's maps for both classes beside every image (each method runs twice per image).",
    )
    if not (explain and methods):
        pictures = [(_thumbnail(path, thumbnail), path, p) for path, p in zip(cell["path"], cell["confidence"])]
        pictures = [(image, path, p) for image, path, p in pictures if image is not None]
        if pictures:
            st.image(
                [image for image, _, _ in pictures],
                caption=[f"{pred_class} {p:.3f}" for _, _, p in pictures],  # fits under a thumbnail
                width=thumbnail,
            )
        return
    result = _cell_maps(
        str(run.path),
        model_stamp(run),
        tuple(cell["path"]),
        names.index(true_class),
        names.index(pred_class),
        tuple(methods),
    )
    images = result["images"].astype("uint8")
    for i, (path, probability) in enumerate(zip(cell["path"], cell["confidence"])):
        st.markdown(f"`{path.rsplit('/', 1)[-1]}` · predicted {pred_class} at {probability:.3f}")
        columns = st.columns(1 + 2 * len(methods))
        columns[0].image(images[i], caption="image", width="stretch")
        for j, method in enumerate(methods):
            maps = result["maps"][method]
            if "error" in maps:
                columns[1 + 2 * j].error(maps["error"])
                continue
            title = describe(method)["title"]
            columns[1 + 2 * j].image(
                overlay(images[i], maps["true"][i]), caption=f"{title}: {true_class} (true)", width="stretch"
            )
            columns[2 + 2 * j].image(
                overlay(images[i], maps["predicted"][i]), caption=f"{title}: {pred_class} (predicted)", width="stretch"
            )
