"""Evaluation: classification report, confusion matrix, ROC and precision-recall curves."""

import streamlit as st

from core import evaluation
from core.runs import RunError
from ui import charts
from ui.common import metrics, predictions, require_run, setup_page

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

st.subheader("Classification report")
report = evaluation.classification_report_frame(scores)
st.dataframe(report.style.format(precision=3, na_rep=""), key="classification_report")

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
