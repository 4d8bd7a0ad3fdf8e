"""Home: what the app is, the current run at a glance, and the one-click demo. Imports no TensorFlow."""

import streamlit as st

from core import demo, distribute, system
from ui.common import run_picker, setup_page, workspace
from ui.serving import render_api_status

setup_page("XAI dashboard for image classifiers", ":material/visibility:")
st.markdown(
    "See your **data**, your **training**, your **evaluation**, and **why** the model decides as it does: "
    "ten explanation methods (Grad-CAM, Grad-CAM++, Score-CAM, occlusion, gradients, SmoothGrad, Integrated "
    "Gradients, LIME, RISE, ...) side by side on any test image or upload, each with the evidence for trusting "
    "it: faithfulness scores, sanity checks and an audit of what the model looks at over the whole test set."
)

run = run_picker()

if run is None:
    st.subheader("No run yet")
    status = demo.demo_status(workspace())
    if status["in_progress"]:

        @st.fragment(run_every=1.0)
        def follow_demo():
            current = demo.demo_status(workspace())
            st.progress(current["fraction"], text=current["message"])
            if not current["in_progress"]:
                st.rerun()

        follow_demo()
    else:
        if status.get("run_status") == "failed":
            st.error(f"The last demo attempt failed: {status.get('error')}")
            st.code(demo.read_log_tail(workspace()) or "(no log)", language="text")
        st.write(
            "Create the built-in demo: a synthetic dataset of circles, squares and triangles on varied "
            "backgrounds, and a compact CNN trained on it. It needs no internet and takes about a minute "
            "on a laptop CPU. It runs once; later starts reuse it."
        )
        if st.button("Create the demo run", type="primary", key="create_demo", icon=":material/play_arrow:"):
            try:
                demo.start_demo_process(workspace())
            except (ValueError, OSError) as exc:  # the workspace is a file or read-only; a demo already starting
                st.error(f"The demo could not be started: {exc}")
            else:
                st.rerun()
        st.caption("Or bring your own: train on an image folder (**Training**) or import a model (**Import model**).")
    st.stop()

st.subheader("Current run")
meta = run.meta
cols = st.columns(4)
cols[0].metric("Model", meta.get("architecture", "?"))
cols[1].metric("Classes", len(run.class_names))
accuracy, auc = meta.get("test_accuracy"), meta.get("roc_auc_macro")
cols[2].metric("Test accuracy", f"{accuracy:.3f}" if accuracy is not None else "n/a")
cols[3].metric("Macro ROC AUC", f"{auc:.3f}" if auc is not None else "n/a")
st.markdown(
    f"**Run** `{run.id}` · **dataset** `{meta.get('dataset')}` · **classes** {', '.join(run.class_names)} · "
    f"**input** {meta.get('input_size')} px · trained on {meta.get('device', '?')} in "
    f"{(meta.get('durations') or {}).get('total_seconds', '?')} s"
)
if devices := distribute.describe(meta):
    st.caption(f"**Devices** {devices}")

st.subheader("Pages")
PAGES = [
    ("pages/1_Dataset.py", "Dataset", ":material/photo_library:"),
    ("pages/2_Training.py", "Training", ":material/show_chart:"),
    ("pages/3_Evaluation.py", "Evaluation", ":material/grid_on:"),
    ("pages/4_Explainer.py", "Explainer", ":material/visibility:"),
    ("pages/5_Import_model.py", "Import model", ":material/upload_file:"),
    ("pages/6_Inside_the_model.py", "Inside the model", ":material/layers:"),
    ("pages/7_Audit.py", "Audit", ":material/policy:"),
    ("pages/8_Feedback.py", "Feedback", ":material/flag:"),
    ("pages/9_Embeddings.py", "Embeddings", ":material/scatter_plot:"),
]
for start in range(0, len(PAGES), 5):
    for column, (page, label, icon) in zip(st.columns(5), PAGES[start : start + 5]):
        column.page_link(page, label=label, icon=icon)

st.subheader("Serve")
st.caption("A REST API over the runs (FastAPI): `/predict`, `/explain`, `/feedback`, `/runs`, docs at `/docs`.")
render_api_status(run)

st.caption(f"TensorFlow {system.tensorflow_version() or 'not installed'} · device: {system.device_in_use()}")
