"""Training: loss and accuracy per epoch, train vs validation; the run's hyper-parameters."""

import pandas as pd
import streamlit as st

from core.runs import RunError
from ui import charts
from ui.common import history, require_run, setup_page

setup_page("Training", ":material/show_chart:")
run = require_run()
try:
    frame = history(run)
except RunError as exc:
    st.error(str(exc))
    st.stop()

best = frame.loc[frame["val_loss"].idxmin()] if "val_loss" in frame else None
cols = st.columns(3)
cols[0].metric("Epochs trained", len(frame))
if best is not None:
    cols[1].metric("Best validation loss", f"{best['val_loss']:.4f}", help=f"epoch {int(best['epoch'])}")
    cols[2].metric("Validation accuracy there", f"{best.get('val_accuracy', float('nan')):.3f}")

left, right = st.columns(2)
left.plotly_chart(charts.training_curves(frame, "loss"), key="loss_curve")
right.plotly_chart(charts.training_curves(frame, "accuracy"), key="accuracy_curve")

st.subheader("Hyper-parameters")
params = dict(run.meta.get("hyperparameters", {}))
params.update({"preprocessing": run.meta.get("preprocessing"), "input_size": str(run.meta.get("input_size"))})
st.dataframe(pd.DataFrame({"value": [str(v) for v in params.values()]}, index=list(params)), key="hyperparameters")
with st.expander("History table"):
    st.dataframe(frame, hide_index=True)
with st.expander("Library versions and timings"):
    st.json({"durations": run.meta.get("durations"), "device": run.meta.get("device"), "versions": run.meta.get("library_versions")})
