"""Explainer: one image, its prediction, and Grad-CAM, occlusion and vanilla gradients side by side."""

from pathlib import Path

import numpy as np
import streamlit as st

from core.data import IMAGE_EXTENSIONS, ImageError, load_image
from core.evaluation import filter_predictions
from core.runs import RunError
from core.visualize import COLORMAPS, colorize, overlay
from ui import charts
from ui.common import conv_layers, explanations, model, predictions, require_run, setup_page

setup_page("Explainer", ":material/visibility:")
run = require_run()
class_names = run.class_names
try:
    frame = predictions(run)
except RunError as exc:
    st.error(str(exc))
    st.stop()
from core.explain import METHODS, describe
from core.models import ModelError, input_size

try:
    net = model(run)
except ModelError as exc:
    st.error(f"The model of this run cannot be loaded: {exc}")
    st.stop()
height, width = input_size(net)
titles = {method: describe(method)["title"] for method in METHODS}

# ---- the image -----------------------------------------------------------------------------------
source = st.radio("Image", ["Test image", "Upload"], horizontal=True, key="image_source")
if source == "Test image":
    left, right, pick = st.columns([1, 1, 2])
    class_filter = left.selectbox("True class", ["All"] + class_names, key="class_filter")
    outcome = right.selectbox("Outcome", ["All", "Correct", "Incorrect"], key="outcome_filter")
    subset = filter_predictions(frame, None if class_filter == "All" else class_filter, outcome.lower())
    if subset.empty:
        st.info("No test image matches these filters.")
        st.stop()
    labels = {
        row.path: f"{Path(row.path).name} · true {row.true_class} · predicted {row.pred_class}"
        for row in subset.itertuples()
    }
    chosen = pick.selectbox("Test image", list(labels), format_func=labels.get, key="test_image")
    try:
        image = load_image(chosen, (height, width))
    except (ImageError, OSError) as exc:
        st.error(f"This test image cannot be read: {exc}")
        st.stop()
    caption = labels[chosen]
else:
    upload = st.file_uploader(
        "Upload an image",
        type=[e.lstrip(".") for e in IMAGE_EXTENSIONS],
        key="upload",
        help=f"Any image Pillow reads; it is resized to the model's input, {width}x{height} pixels.",
    )
    if upload is None:
        st.info("Choose an image file to explain.")
        st.stop()
    try:
        image = load_image(upload.getvalue(), (height, width))
    except ImageError as exc:
        st.error(f"**{upload.name}** cannot be used: {exc}")
        st.stop()
    caption = upload.name

# ---- controls -------------------------------------------------------------------------------------
with st.sidebar:
    st.header("Explanation settings")
    methods = st.multiselect("Methods", list(METHODS), default=list(METHODS), format_func=titles.get, key="methods")
    target = st.selectbox("Target class", ["Predicted class"] + class_names, key="target_class")
    layers = conv_layers(run)
    layer_name = st.selectbox("Grad-CAM layer", layers, index=len(layers) - 1, key="gradcam_layer") if layers else None
    # Patches of at least 1/32 of the side keep occlusion to at most 32 x 32 = 1,024 forward passes.
    side = min(height, width)
    low, high = max(1, side // 32), max(1, side // 2)
    patch_size = (
        st.slider("Occlusion patch size (px)", low, high, max(low, side // 8), key="patch_size") if high > low else low
    )
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    colormap = st.selectbox("Colormap", COLORMAPS, key="colormap")

class_index = None if target == "Predicted class" else class_names.index(target)
# Occluded copies per forward pass: about 4 million pixels, so memory stays bounded at any input size.
params = {"occlusion": {"patch_size": int(patch_size), "batch_size": int(max(1, min(64, 2**22 // (height * width))))}}
if layer_name:
    params["gradcam"] = {"layer_name": layer_name}
with st.spinner("Explaining…"):
    probs, results = explanations(run, image, methods, class_index, params)
predicted = int(np.argmax(probs))
explained = predicted if class_index is None else class_index

# ---- prediction -----------------------------------------------------------------------------------
left, right = st.columns([1, 2])
left.image(image, caption=caption, width="stretch")
with right:
    st.markdown(
        f"Predicted **{class_names[predicted]}** ({probs[predicted]:.1%}) · explaining **{class_names[explained]}**"
    )
    st.plotly_chart(charts.probabilities_bar(class_names, probs, predicted), key="probabilities")

# ---- explanations side by side --------------------------------------------------------------------
if not methods:
    st.info("Choose at least one method in the sidebar.")
    st.stop()
st.subheader("Explanations")
for column, result in zip(st.columns(len(results)), results):
    with column:
        st.markdown(f"**{titles.get(result.method, result.method)}**")
        if result.error:
            st.error(result.error)
            continue
        st.image(overlay(image, result.saliency, alpha, colormap), caption="overlay", width="stretch")
        st.image(colorize(result.saliency, colormap), caption="heatmap", width="stretch")
        st.caption(f"{result.seconds * 1000:.0f} ms")
