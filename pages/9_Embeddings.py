"""Embeddings: the run's feature space (the input of its last Dense layer) for the test split and a sample of
the training split, projected with t-SNE or PCA; pick a point to see the image, its prediction and Grad-CAM,
and open it in the Explainer."""

import streamlit as st

from ui import embeddings as ui
from ui.common import require_run, setup_page

setup_page("Embeddings", ":material/scatter_plot:")
run = require_run()
st.caption(
    "What the model's classifier sees: each image's features at the input of the last Dense layer, placed so "
    "that similar features lie close together. Colour is the true class; a cross is a misclassified image; "
    "fainter points are training images. Click a point or pick an image below."
)
result = ui.feature_space(run)
projection, splits = ui.controls()
path = ui.chart_and_picker(run, result, projection, splits)
ui.show_picked(run, result.frame, path)
