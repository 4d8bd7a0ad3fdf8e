"""Explainer: one image, its prediction, and any explanation methods side by side, for one run or two.

Methods and their parameter widgets come from `core.explain.describe`; maps are shown on the image at its
own aspect ratio; results are cached per (run, model, image, method, class, parameters)."""

from pathlib import Path

import numpy as np
import streamlit as st

from core.data import IMAGE_EXTENSIONS, ImageError, load_image, load_thumbnail
from core.evaluation import filter_predictions
from core.runs import RunError, list_runs
from core.visualize import COLORMAPS
from ui import charts
from ui import explainer as ui
from ui.common import conv_layers, model, predictions, require_run, setup_page, workspace

DEFAULT_METHODS = ("gradcam", "occlusion", "vanilla_gradients")  # fast on a CPU; any others on demand
DISPLAY_SIDE = 512  # overlays are drawn on the image scaled to at most this side, aspect kept

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
infos = {method: describe(method, (height, width)) for method in METHODS}

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
    data, caption, image_name = chosen, labels[chosen], Path(chosen).name
    failure = "This test image cannot be read"
else:
    upload = st.file_uploader(
        "Upload an image",
        type=[e.lstrip(".") for e in IMAGE_EXTENSIONS],
        key="upload",
        help=f"Any image Pillow reads; the model sees it at {width}x{height} pixels, the maps are shown on it "
        "at its own aspect ratio.",
    )
    if upload is None:
        st.info("Choose an image file to explain.")
        st.stop()
    data, caption, image_name = upload.getvalue(), upload.name, upload.name
    failure = f"**{upload.name}** cannot be used"
try:
    image = load_image(data, (height, width))  # what the model sees
    picture = load_thumbnail(data, DISPLAY_SIDE)  # what people see: the original aspect ratio
except (ImageError, OSError) as exc:
    st.error(f"{failure}: {exc}")
    st.stop()

# ---- controls -------------------------------------------------------------------------------------
others = {r.id: r for r in list_runs(workspace()) if r.is_complete and r.id != run.id}
with st.sidebar:
    st.header("Explanation settings")
    methods = st.multiselect(
        "Methods",
        list(METHODS),
        default=[m for m in DEFAULT_METHODS if m in METHODS],
        format_func=lambda m: infos[m]["title"],
        key="methods",
        help="Any number of methods, shown side by side. LIME, RISE, Score-CAM and SmoothGrad take longer on a CPU.",
    )
    target = st.selectbox("Target class", ["Predicted class"] + class_names, key="target_class")
    compare_id = st.selectbox(
        "Compare with run",
        [None] + list(others),
        format_func=lambda r: "None" if r is None else others[r].label,
        key="compare_run",
        help="The same image and methods on a second run's model (e.g. before and after fine-tuning).",
    )
    columns = st.slider("Columns", 1, 6, 3, key="grid_columns", help="Methods per row of the grid.")
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    colormap = st.selectbox("Colormap", COLORMAPS, key="colormap")
    params = {}
    layers = conv_layers(run)
    for method in methods:
        if infos[method]["params"]:
            with st.expander(f"{infos[method]['title']} parameters", icon=":material/tune:"):
                params[method] = ui.param_widgets(method, infos[method], layers)

probs = ui.probabilities(run, image)
predicted = int(np.argmax(probs))
explained = predicted if target == "Predicted class" else class_names.index(target)

second = None
if compare_id is not None:
    from core.compare import adapt_params

    run_b = others[compare_id]
    try:
        net_b = model(run_b)
        image_b = load_image(data, input_size(net_b))
    except (ModelError, ImageError) as exc:
        st.error(f"Run {run_b.id} cannot be compared: {exc}")
        st.stop()
    probs_b = ui.probabilities(run_b, image_b)
    names_b = run_b.class_names
    wanted = class_names[explained] if target != "Predicted class" else None
    explained_b = names_b.index(wanted) if wanted in names_b else int(np.argmax(probs_b))
    params_b = {m: adapt_params(net_b, m, params.get(m)) for m in methods}
    second = (run_b, image_b, probs_b, names_b, explained_b, params_b)

# ---- prediction -----------------------------------------------------------------------------------
left, right = st.columns([1, 2])
left.image(picture, caption=caption, width="stretch")
with right:
    st.markdown(
        f"Predicted **{class_names[predicted]}** ({probs[predicted]:.1%}) · explaining **{class_names[explained]}**"
    )
    if second is not None:
        run_b, _, probs_b, names_b, explained_b, _ = second
        top_b = int(np.argmax(probs_b))
        st.markdown(
            f"Run `{run_b.id}` predicts **{names_b[top_b]}** ({probs_b[top_b]:.1%}) · explaining "
            f"**{names_b[explained_b]}**"
        )
    st.plotly_chart(charts.probabilities_bar(class_names, probs, predicted), key="probabilities")

# ---- explanations side by side --------------------------------------------------------------------
if not methods:
    st.info("Choose at least one method in the sidebar.")
    st.stop()
from core.compare import explanation_files, weak_target_note, zip_bytes

with st.spinner("Explaining…"):
    results = ui.explanations(run, image, methods, explained, params)
    results_b = None if second is None else ui.explanations(second[0], second[1], methods, second[4], second[5])
weak = weak_target_note(float(probs[explained]), class_names[explained])
if weak:
    st.warning(weak, icon=":material/warning:")

st.subheader("Explanations")
if results_b is None:
    for start in range(0, len(results), columns):
        for cell, result in zip(st.columns(columns), results[start : start + columns]):
            with cell.container(border=True):
                ui.method_cell(result, infos[result.method], picture, alpha, colormap, key=f"a_{result.method}")
else:
    heads = st.columns(2)
    heads[0].markdown(f"Run `{run.id}` ({run.meta.get('architecture', '?')}, {width}x{height})")
    heads[1].markdown(f"Run `{second[0].id}` ({second[0].meta.get('architecture', '?')})")
    for result, result_b in zip(results, results_b):
        left, right = st.columns(2)
        with left.container(border=True):
            ui.method_cell(result, infos[result.method], picture, alpha, colormap, key=f"a_{result.method}")
        with right.container(border=True):
            ui.method_cell(result_b, infos[result.method], picture, alpha, colormap, key=f"b_{result.method}")

# ---- downloads ------------------------------------------------------------------------------------
extra = {"run": run.id, "image": image_name, "model_input_size": [height, width]}
files, _ = explanation_files(picture, probs, results, class_names, alpha=alpha, colormap=colormap, extra=extra)
bundle = files
if results_b is not None:
    run_b, image_b, probs_b, names_b = second[:4]
    extra_b = {"run": run_b.id, "image": image_name, "model_input_size": list(image_b.shape[:2])}
    files_b, _ = explanation_files(picture, probs_b, results_b, names_b, alpha=alpha, colormap=colormap, extra=extra_b)
    bundle = {**{f"{run.id}/{k}": v for k, v in files.items()}, **{f"{run_b.id}/{k}": v for k, v in files_b.items()}}
stem = Path(image_name).stem or "image"
st.subheader("Downloads")
zip_col, npz_col, json_col, _ = st.columns([1, 1, 1, 2])
zip_col.download_button(
    "Everything (.zip)",
    zip_bytes(bundle),
    file_name=f"explanations_{stem}.zip",
    mime="application/zip",
    key="download_zip",
    on_click="ignore",
    help="Overlays and heatmaps (PNG), maps (.npy, raw_maps.npz) and explanation.json per run.",
)
if "raw_maps.npz" in files:
    npz_col.download_button(
        "Raw maps (.npz)",
        files["raw_maps.npz"],
        file_name=f"raw_maps_{stem}.npz",
        mime="application/octet-stream",
        key="download_npz",
        on_click="ignore",
    )
json_col.download_button(
    "Report (.json)",
    files["explanation.json"],
    file_name=f"explanation_{stem}.json",
    mime="application/json",
    key="download_json",
    on_click="ignore",
    help="Prediction, methods, parameters, raw ranges, units, timings and library versions.",
)
