"""Import a model you trained: .keras, .h5 or a SavedModel folder, evaluated on your data's test split."""

import tempfile
from pathlib import Path

import streamlit as st

from core import runs
from core.catalog import PREPROCESSING_DESCRIPTIONS as PREPROCESSING
from core.data import DatasetError
from ui.common import folder_input, setup_page, workspace

setup_page("Import a model", ":material/upload_file:")
st.markdown(
    "Bring a Keras model you already trained. It is loaded safely: a model with a `Lambda` layer, or a "
    "SavedModel with ops that touch files or call Python, is refused and nothing in it runs. Its "
    "preprocessing is put in front of it, so every page and explanation works on plain pixels."
)
kind = st.radio(
    "Model", ["Upload a .keras or .h5 file", "A file or SavedModel folder on this machine"], key="import_kind"
)
upload = path = None
if kind.startswith("Upload"):
    upload = st.file_uploader("Model file", type=["keras", "h5", "hdf5"], key="model_upload")
else:
    path = folder_input(
        "Model path (.keras, .h5 or SavedModel folder)", "model_path", file_suffixes=(".keras", ".h5", ".hdf5")
    )
data = folder_input("Image folder with the classes the model predicts", "import_data")
preprocess = st.selectbox(
    "Preprocessing the model expects",
    list(PREPROCESSING),
    format_func=lambda k: f"{k}: {PREPROCESSING[k]}",
    key="import_preprocess",
)
class_names = st.text_input(
    "Class names in the model's output order (comma-separated; default: folder names sorted)", key="import_classes"
)
name = st.text_input("Run name", key="import_name")

if st.button("Import and evaluate", type="primary", key="import_button"):
    from core.model_import import import_run
    from core.models import ModelError

    if data is None or (upload is None and path is None):
        st.error("Choose a model and an image folder first.")
        st.stop()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = path
        if upload is not None:
            model_path = Path(tmp) / Path(upload.name).name
            model_path.write_bytes(upload.getvalue())
        names = [c for c in class_names.split(",") if c.strip()] or None
        try:
            with st.spinner("Loading, checking and evaluating the model…"):
                run = import_run(workspace(), model_path, data, preprocess, names, name=name.strip() or None)
        except (ModelError, DatasetError, ValueError) as exc:
            st.error(str(exc))
            st.stop()
    st.session_state["selected_run_id"] = run.id
    st.success(f"Imported as run **{run.id}**: test accuracy {run.meta['test_accuracy']:.3f}. Every page now shows it.")

imported = [r for r in runs.list_runs(workspace()) if r.meta.get("source") == "imported"][:5]
if imported:
    st.subheader("Imported runs")
    for item in imported:
        st.markdown(
            f"`{item.id}` · {item.status} · {item.meta.get('imported_from')}"
            + (f" · {item.meta.get('error')}" if item.meta.get("error") else "")
        )
