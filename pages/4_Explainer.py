"""Explainer: one image, its prediction, and any explanation methods side by side, for one run or two, or
for the predicted and the true class; under each map its evidence (deletion and insertion AUCs against a
random map, and localisation where the dataset has masks); a form to flag what looks wrong.

Methods and their parameter widgets come from `core.explain.describe`; maps are shown on the image at its
own aspect ratio; results are cached per (run, model, image, method, class, parameters). Other pages open
an image here through ``st.session_state[EXPLAIN_REQUEST]``."""

from pathlib import Path

import numpy as np
import streamlit as st

from core import charts
from core.data import IMAGE_EXTENSIONS, ImageError, load_image, load_thumbnail
from core.evaluation import filter_predictions
from core.runs import RunError, list_runs
from core.visualize import COLORMAPS
from ui import explainer as ui
from ui.common import (
    EXPLAIN_REQUEST,
    SELECTED_RUN,
    conv_layers,
    model,
    predictions,
    require_run,
    setup_page,
    workspace,
)

DEFAULT_METHODS = ("gradcam", "occlusion", "vanilla_gradients")  # fast on a CPU; any others on demand
DISPLAY_SIDE = 512  # overlays are drawn on the image scaled to at most this side, aspect kept
PREDICTED = "Predicted class"
BOTH = "Predicted and true class, side by side"
REQUESTED = "explainer_requested"  # the image another page opened here, kept while the page is used

setup_page("Explainer", ":material/visibility:")
request = st.session_state.pop(EXPLAIN_REQUEST, None)  # from the Evaluation or Embeddings page
if isinstance(request, dict) and request.get("run") and request.get("path"):
    st.session_state[SELECTED_RUN] = str(request["run"])
    st.session_state.update(image_source="Test image", class_filter="All", outcome_filter="All")
    st.session_state["test_image"] = str(request["path"])
    st.session_state[REQUESTED] = {"run": str(request["run"]), "path": str(request["path"]), **request}
    classes = [str(c) for c in request.get("classes") or []]
    if len(set(classes)) == 2:
        st.session_state["target_class"] = BOTH
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
    true_classes = dict(zip(frame["path"], frame["true_class"], strict=False))
    asked = st.session_state.get(REQUESTED)
    if asked and asked["run"] == run.id and asked["path"] not in labels:  # e.g. a training image (Embeddings)
        classes = [str(c) for c in asked.get("classes") or []]
        true_classes.setdefault(asked["path"], classes[0] if classes else None)
        labels = {asked["path"]: f"{Path(asked['path']).name} · opened from another page", **labels}
    chosen = pick.selectbox("Test image", list(labels), format_func=labels.get, key="test_image")
    data, caption, image_name = chosen, labels[chosen], Path(chosen).name
    true_class = true_classes.get(chosen)
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
    true_class = None
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
    target = st.selectbox(
        "Target class",
        [PREDICTED, BOTH] + class_names,
        key="target_class",
        help="The class each map explains. Side by side: why the model said its class rather than the true one.",
    )
    compare_id = st.selectbox(
        "Compare with run",
        [None] + list(others),
        format_func=lambda r: "None" if r is None else others[r].label,
        key="compare_run",
        disabled=target == BOTH,
        help="The same image and methods on a second run's model (e.g. before and after fine-tuning).",
    )
    if target == BOTH:
        compare_id = None
    scored = st.toggle(
        "Faithfulness scores",
        value=True,
        key="faithfulness",
        help="Deletion and insertion (Petsiuk et al. 2018): the model's probability as the map's most important "
        "pixels are removed (black) or put back (on a blurred image), 21 points; a random map is the reference.",
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

from core.explorer import load_threshold, predicted_index

probs = ui.probabilities(run, image)
predicted = int(predicted_index(run, probs)[0])  # the run's saved decision threshold, if any, else argmax
threshold = load_threshold(run)
explained = predicted if target in (PREDICTED, BOTH) else class_names.index(target)
true_index = class_names.index(true_class) if true_class in class_names else None
if target == BOTH and true_index is None:
    st.info("The true class of this image is unknown: explaining the predicted class only.")
second_class = true_index if target == BOTH and true_index is not None and true_index != predicted else None

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
    wanted = class_names[explained] if target not in (PREDICTED, BOTH) else None
    explained_b = names_b.index(wanted) if wanted in names_b else int(np.argmax(probs_b))
    params_b = {m: adapt_params(net_b, m, params.get(m)) for m in methods}
    second = (run_b, image_b, probs_b, names_b, explained_b, params_b)

# ---- prediction -----------------------------------------------------------------------------------
left, right = st.columns([1, 2])
left.image(picture, caption=caption, width="stretch")
with right:
    truth = f" · true class **{true_class}**" if true_class is not None else ""
    explaining = class_names[explained] + (f" and **{class_names[second_class]}**" if second_class is not None else "")
    st.markdown(f"Predicted **{class_names[predicted]}** ({probs[predicted]:.1%}){truth} · explaining **{explaining}**")
    if threshold is not None:
        st.caption(
            f"Decision threshold saved on the Evaluation page: **{threshold['class']}** when its probability is "
            f"at least {threshold['threshold']:.2f}."
        )
    if target == BOTH and true_index is not None and second_class is None:
        st.caption("The prediction is correct: there is one class to explain.")
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
    if second is not None:
        results_b = ui.explanations(second[0], second[1], methods, second[4], second[5])
    elif second_class is not None:
        results_b = ui.explanations(run, image, methods, second_class, params)
    else:
        results_b = None
weak = weak_target_note(float(probs[explained]), class_names[explained])
if weak:
    st.warning(weak, icon=":material/warning:")

# Ground truth, where the dataset has masks (``masks/`` mirroring the image folder): outline and localisation.
mask = outline_mask = None
dataset_root = run.meta.get("dataset")
if source == "Test image" and dataset_root:
    from core.masks import masks_for

    mask, outline_mask = (masks_for([chosen], dataset_root, size)[0] for size in ((height, width), picture.shape[:2]))
    if mask is not None and second is not None:
        mask = None  # two models, two input sizes: localisation is scored on the first run's only

# (run, image, class, results, heading) per column
if second is not None:
    sides = [
        (run, image, explained, results, f"Run `{run.id}` ({run.meta.get('architecture', '?')}, {width}x{height})"),
        (
            second[0],
            second[1],
            second[4],
            results_b,
            f"Run `{second[0].id}` ({second[0].meta.get('architecture', '?')})",
        ),
    ]
elif second_class is not None:
    sides = [
        (run, image, explained, results, f"Predicted class **{class_names[explained]}** ({probs[explained]:.1%})"),
        (
            run,
            image,
            second_class,
            results_b,
            f"True class **{class_names[second_class]}** ({probs[second_class]:.1%})",
        ),
    ]
else:
    sides = [(run, image, explained, results, None)]
evidence = [ui.faithfulness(r, img, res, cls) if scored else ({}, None) for r, img, cls, res, _ in sides]

st.subheader("Explanations")
if scored:
    for (_, _, _, _, heading), (scores, reference) in zip(sides, evidence):
        line = ui.ranking_text(scores, reference, infos)
        if line:
            st.caption((f"{heading}: " if heading else "") + line)


def cell(side: int, result, key: str) -> None:
    scores, reference = evidence[side]
    side_mask = mask if side == 0 or second is None else None
    ui.method_cell(result, infos[result.method], picture, alpha, colormap, key=key, mask_outline=outline_mask)
    ui.evidence(result, scores.get(result.method), reference, side_mask, key=key)


if len(sides) == 1:
    for start in range(0, len(results), columns):
        for column, result in zip(st.columns(columns), results[start : start + columns]):
            with column.container(border=True):
                cell(0, result, key=f"a_{result.method}")
else:
    heads = st.columns(2)
    for head, side in zip(heads, sides):
        head.markdown(side[4])
    for result, result_b in zip(results, results_b):
        left, right = st.columns(2)
        with left.container(border=True):
            cell(0, result, key=f"a_{result.method}")
        with right.container(border=True):
            cell(1, result_b, key=f"b_{result.method}")

# ---- downloads ------------------------------------------------------------------------------------
extra = {"run": run.id, "image": image_name, "model_input_size": [height, width]}
files, _ = explanation_files(picture, probs, results, class_names, alpha=alpha, colormap=colormap, extra=extra)
bundle = files
if second is not None:
    run_b, image_b, probs_b, names_b = second[:4]
    extra_b = {"run": run_b.id, "image": image_name, "model_input_size": list(image_b.shape[:2])}
    files_b, _ = explanation_files(picture, probs_b, results_b, names_b, alpha=alpha, colormap=colormap, extra=extra_b)
    bundle = {**{f"{run.id}/{k}": v for k, v in files.items()}, **{f"{run_b.id}/{k}": v for k, v in files_b.items()}}
elif second_class is not None:
    files_b, _ = explanation_files(picture, probs, results_b, class_names, alpha=alpha, colormap=colormap, extra=extra)
    bundle = {
        **{f"predicted_{class_names[explained]}/{k}": v for k, v in files.items()},
        **{f"true_{class_names[second_class]}/{k}": v for k, v in files_b.items()},
    }
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

# ---- feedback -------------------------------------------------------------------------------------
from ui.serving import render_flag_form

try:
    image_bytes = data if isinstance(data, bytes) else Path(data).read_bytes()
except OSError as exc:
    st.caption(f"This image cannot be flagged: {exc}")
else:
    render_flag_form(run, image_bytes, probs, ", ".join(methods), params, explained, true_class=true_class)
