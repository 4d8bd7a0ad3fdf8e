"""Import a model you trained: .keras, .h5 or a SavedModel folder, evaluated on your data's test split."""

import tempfile
from pathlib import Path

import streamlit as st

from core import runs
from core.catalog import PREPROCESSING_DESCRIPTIONS as PREPROCESSING
from ui.common import folder_input, setup_page, workspace

setup_page("Import model", ":material/upload_file:")  # the sidebar's name for this page
st.markdown(
    "Bring a Keras model you already trained. It is loaded safely: a model with a `Lambda` layer, or a "
    "SavedModel with ops that touch files or call Python, is refused and nothing in it runs. Its "
    "preprocessing is put in front of it, so every page and explanation works on plain pixels."
)
upload_limit_mb = int(st.get_option("server.maxUploadSize"))
kind = st.radio(
    "Model", ["Upload a .keras or .h5 file", "A file or SavedModel folder on this machine"], key="import_kind"
)
upload = path = None
if kind.startswith("Upload"):
    upload = st.file_uploader(
        f"Model file (.keras or .h5, at most {upload_limit_mb} MB)",
        type=["keras", "h5", "hdf5"],
        key="model_upload",
        help=f"Uploads are limited to {upload_limit_mb} MB (server.maxUploadSize in .streamlit/config.toml). "
        "For a larger model, choose 'A file or SavedModel folder on this machine'.",
    )
    st.caption(
        f"A file over {upload_limit_mb} MB is refused by the browser (a red mark on the file): "
        "give its path on this machine instead."
    )
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
    from core.importing import import_run

    if data is None or (upload is None and path is None):
        st.error("Choose a model and an image folder first.")
        st.stop()
    with tempfile.TemporaryDirectory() as tmp:
        model_path, source_name = path, None
        if upload is not None:  # a temporary copy: the run records the upload's own name
            source_name = Path(upload.name).name
            model_path = Path(tmp) / source_name
            model_path.write_bytes(upload.getvalue())
        names = [c for c in class_names.split(",") if c.strip()] or None
        try:
            with st.spinner("Checking, loading and evaluating the model…"):
                run = import_run(
                    workspace(),
                    model_path,
                    data,
                    preprocess,
                    names,
                    name=name.strip() or None,
                    source_name=f"{source_name} (uploaded)" if source_name else None,
                )
        except (ValueError, OSError) as exc:  # ModelError, DatasetError, ImageError, RunError are ValueErrors
            st.error(f"The model was not imported: {exc}")
            st.stop()
    st.session_state["selected_run_id"] = run.id
    st.success(f"Imported as run **{run.id}**: test accuracy {run.meta['test_accuracy']:.3f}. Every page now shows it.")


def _origin(meta: dict) -> str:
    """Where an imported model came from; a temporary upload path of older runs shows as its file name."""
    origin = str(meta.get("imported_from") or "?")
    if origin.startswith(tempfile.gettempdir()) and not Path(origin).exists():
        return f"{Path(origin).name} (uploaded)"
    return origin


imported = [r for r in runs.list_runs(workspace()) if r.meta.get("source") == "imported"][:5]
if imported:
    st.subheader("Imported runs")
    for item in imported:
        st.markdown(
            f"`{item.id}` · {item.status} · {_origin(item.meta)}"
            + (f" · {item.meta.get('error')}" if item.meta.get("error") else "")
        )
