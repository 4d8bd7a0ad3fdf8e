"""Evaluation: the classic report, then calibration, thresholds, intervals, groups, ranked mistakes and a
confusion-matrix drill-down (the evaluation explorer, `ui/explorer.py`)."""

import streamlit as st

from core import charts, evaluation
from core.runs import RunError
from ui import explorer
from ui.common import metrics, predictions, require_run, setup_page
from ui.serving import mlflow_caption, render_report_download

setup_page("Evaluation", ":material/grid_on:")
run = require_run()
try:
    frame, scores = predictions(run), metrics(run)
except RunError as exc:
    st.error(str(exc))
    st.stop()

cols = st.columns(3)
cols[0].metric("Test accuracy", f"{scores['accuracy']:.3f}")
auc = scores.get("roc_auc_macro")
cols[1].metric("Macro ROC AUC", f"{auc:.3f}" if auc is not None else "n/a")
cols[2].metric("Test images", scores["n_samples"])
if scores.get("decision_threshold"):
    chosen, argmax_accuracy = scores["decision_threshold"], scores.get("argmax_accuracy")
    plain = f", {argmax_accuracy:.3f} with the most probable class" if argmax_accuracy is not None else ""
    st.info(
        f"Predicted classes on this page use the saved decision threshold: **{chosen['class']}** when its "
        f"probability is at least {chosen['threshold']:.3f} (accuracy {scores['accuracy']:.3f} with it{plain}). "
        "ROC and precision-recall curves do not depend on it; calibration and the intervals on How sure are "
        "about the most probable class. Change or remove it on the Thresholds tab.",
        icon=":material/tune:",
    )

report_tab, calibration_tab, threshold_tab, interval_tab, mistakes_tab, drill_tab = st.tabs(
    ["Report", "Calibration", "Thresholds", "How sure", "Mistakes and groups", "Confusion drill-down"]
)
with report_tab:
    st.subheader("Classification report")
    report = evaluation.classification_report_frame(scores)
    # A static table: st.dataframe draws a missing cell as the text "None" whatever the Styler says.
    st.table(report.style.format(precision=3, na_rep="").format("{:d}", subset=["support"]))

    st.subheader("Confusion matrix")
    counts_tab, normalized_tab = st.tabs(["Counts", "Row-normalised (recall per class)"])
    counts_tab.plotly_chart(charts.confusion_heatmap(evaluation.confusion_matrix(frame), False), key="confusion_counts")
    normalized_tab.plotly_chart(
        charts.confusion_heatmap(evaluation.confusion_matrix(frame, normalize=True), True), key="confusion_normalized"
    )

    left, right = st.columns(2)
    with left:
        st.subheader("ROC curves (one-vs-rest)")
        st.plotly_chart(charts.roc_figure(evaluation.roc_curves(frame)), key="roc_curves")
    with right:
        st.subheader("Precision-recall curves")
        st.plotly_chart(charts.pr_figure(evaluation.pr_curves(frame)), key="pr_curves")

    with st.expander("Misclassified test images"):
        wrong = frame[~frame["correct"]]
        if wrong.empty:
            st.write("None: every test image is classified correctly.")
        else:
            st.dataframe(wrong[["path", "true_class", "pred_class", "confidence"]], hide_index=True)

    st.subheader("Share this run")
    mlflow_caption(run)
    render_report_download(run)
with calibration_tab:
    st.caption("Are the probabilities honest? A model that says 0.9 should be right 9 times out of 10.")
    explorer.render_calibration(run, frame)
with threshold_tab:
    st.caption("The decision threshold on one class's probability: what sensitivity at what specificity.")
    explorer.render_thresholds(run, frame)
with interval_tab:
    explorer.render_uncertainty(run, frame, scores)
    st.subheader("Is another run really better?")
    explorer.render_comparison(run, frame, predictions)
with mistakes_tab:
    explorer.render_mistakes(run, frame)
    st.subheader("Metrics per group (sub-folders of a class: patients, hospitals, cameras)")
    explorer.render_groups(frame)
with drill_tab:
    explorer.render_drilldown(run, frame)
