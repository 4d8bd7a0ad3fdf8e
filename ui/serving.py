"""Streamlit glue for feedback, the report and the API: cached loaders and the Explainer's "Flag this" form
(the Embeddings page has its own glue, `ui.embeddings`).

render_flag_form(run, image, prediction, method, params, explained_class, true_class)  # on the Explainer page
render_api_status()                                                                      # a Serve section (Home)
mlflow_caption(run)                                                                      # its MLflow run, linked
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import urllib.request

import numpy as np
import streamlit as st

from core import feedback, runs, tracking
from ui.common import workspace

NO_CLASS = "(not sure)"
API_URL = "http://127.0.0.1:8000"  # where Home looks for a server; $XAI_API_URL overrides it


# ---- feedback --------------------------------------------------------------------------------------


def _probabilities(run: runs.Run, prediction) -> dict[str, float]:
    """``prediction`` as {class: probability}: a dict like that, an API-style answer, or a (C,) array."""
    if isinstance(prediction, dict):
        prediction = prediction.get("probabilities", prediction)
        return {str(k): float(v) for k, v in prediction.items() if isinstance(v, (int, float, np.floating))}
    probs = np.asarray(prediction, dtype=float).reshape(-1)
    return {name: float(p) for name, p in zip(run.class_names, probs, strict=False)}


def _predicted_class(run: runs.Run, probabilities: dict[str, float]) -> str | None:
    """The class the run predicts from these probabilities: its saved decision threshold, else the most probable
    (what the Explainer's headline and the API say)."""
    if not probabilities:
        return None
    if set(run.class_names) <= set(probabilities):
        from core.explorer import predicted_index

        return run.class_names[int(predicted_index(run, [probabilities[c] for c in run.class_names])[0])]
    return max(probabilities, key=probabilities.get)


def _image_key(image) -> str:
    data = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else np.ascontiguousarray(image).tobytes()
    return hashlib.sha256(data).hexdigest()[:12]


def default_flag_type(predicted: str | None, true_class: str | None) -> str:
    """The flag type offered first: "Implausible explanation" when the prediction is right (the true class is
    known and predicted), otherwise "Wrong prediction"."""
    if true_class is not None and predicted is not None and str(true_class) == str(predicted):
        return "implausible_explanation"
    return "wrong_prediction"


def render_flag_form(
    run: runs.Run,
    image,
    prediction,
    method: str | None,
    params: dict | None,
    explained_class,
    true_class=None,
):
    """A "Flag this" form: flag type, the correct class if known, a comment; stores the flag with the image.

    Args:
        run: the run whose model made the prediction.
        image: the image as encoded bytes (an upload) or a uint8 (H, W, 3) array.
        prediction: {class: probability}, an API answer with "probabilities", or a (C,) probability array.
        method, params: the explanation shown (None if none).
        explained_class: the class explained, a name or an index into the run's classes.
        true_class: the image's known class (a name or an index), or None: when it is the predicted class the
            form offers "Implausible explanation" first, else "Wrong prediction".
    """
    probabilities = _probabilities(run, prediction)
    predicted = _predicted_class(run, probabilities)
    if isinstance(explained_class, (int, np.integer)):
        explained_class = run.class_names[int(explained_class)]
    if isinstance(true_class, (int, np.integer)):
        true_class = run.class_names[int(true_class)]
    types = list(feedback.FLAG_TYPES)
    key = f"flag_{run.id}_{_image_key(image)}_{method}"
    with st.expander("Flag this prediction or explanation", icon=":material/flag:"):
        with st.form(key=key, clear_on_submit=True):
            flag_type = st.radio(
                "What is wrong?",
                types,
                index=types.index(default_flag_type(predicted, true_class)),
                format_func=feedback.FLAG_TYPES.get,
                key=f"{key}_type",
                horizontal=True,
            )
            correct = st.selectbox("Correct class, if you know it", [NO_CLASS, *run.class_names], key=f"{key}_class")
            comment = st.text_area("Comment", key=f"{key}_comment", max_chars=5000, placeholder="What did you see?")
            submitted = st.form_submit_button("Flag this", icon=":material/flag:")
        if submitted:
            try:
                flag_id = feedback.add_flag(
                    workspace(),
                    image,
                    flag_type=flag_type,
                    run_id=run.id,
                    correct_class=None if correct == NO_CLASS else correct,
                    comment=comment,
                    predicted_class=predicted,
                    probabilities=probabilities,
                    explained_class=explained_class,
                    method=method,
                    params=params or {},
                    source="dashboard",
                )
            except (feedback.FeedbackError, OSError) as exc:
                st.error(f"The flag could not be stored: {exc}")
            else:
                st.success(f"Flag #{flag_id} stored ({feedback.FLAG_TYPES[flag_type]}). See it on the Feedback page.")


@st.cache_data(show_spinner=False, max_entries=2048)
def thumbnail_uri(image_path: str, max_side: int = 64) -> str:
    """A small PNG data URI of a stored image (content-addressed, so its path is a sufficient key)."""
    from core.data import ImageError, load_thumbnail
    from core.visualize import png_bytes

    try:
        return "data:image/png;base64," + base64.b64encode(png_bytes(load_thumbnail(image_path, max_side))).decode()
    except (ImageError, OSError):
        return ""


def flags_table(flags: list[dict]):
    """The flags as a table for st.dataframe, a thumbnail column first."""
    import pandas as pd

    root = feedback.images_dir(workspace())
    rows = [
        {
            "image": thumbnail_uri(str(root / f["image_file"])),
            "id": f["id"],
            "when (UTC)": f["created_at"][:19].replace("T", " "),
            "type": feedback.FLAG_TYPES.get(f["flag_type"], f["flag_type"]),
            "run": f["run_id"],
            "predicted": f["predicted_class"],
            "confidence": max(f["probabilities"].values()) if f["probabilities"] else None,
            "correct class": f["correct_class"],
            "explained": f["explained_class"],
            "method": f["method"],
            "params": json.dumps(f["params"]) if f["params"] else "",
            "comment": f["comment"],
            "source": f.get("source"),
        }
        for f in flags
    ]
    return pd.DataFrame(rows)


# ---- the API ---------------------------------------------------------------------------------------


def api_url() -> str:
    return os.environ.get("XAI_API_URL", API_URL).rstrip("/")


def api_health(url: str | None = None, timeout: float = 0.5) -> dict | None:
    """The /health answer of an API server at ``url`` (default `api_url`), or None if none answers."""
    url = url or api_url()
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return json.loads(response.read().decode())
    except (OSError, ValueError):
        return None


def render_api_status(run: runs.Run | None = None, url: str | None = None) -> None:
    """A Serve section: the command that starts the REST API and whether one answers at ``url``."""
    url = url or api_url()
    run_arg = f" --run {run.id}" if run is not None else ""
    workspace_arg = f" --workspace {shlex.quote(str(workspace()))}"
    st.code(f".venv/bin/python -m core serve{workspace_arg}{run_arg} --port 8000", language="bash")
    health = api_health(url)
    if health:
        loaded = ", ".join(health.get("runs_loaded", [])) or "none yet"
        st.success(f"An API server answers at {url} (runs loaded: {loaded}). Docs: {url}/docs")
    else:
        st.caption(f"No API server answers at {url}. Start one with the command above; its docs are then at /docs.")


# ---- the shareable report --------------------------------------------------------------------------

REPORT_STATE = "built_report"  # (run id, methods, HTML) of the last report built in this session


def render_report_download(run: runs.Run) -> None:
    """Build the run's self-contained HTML report (`core.report`) on request, then offer it for download."""
    from core import report
    from core.explain import METHODS, describe

    st.caption(
        "One HTML file that opens offline in any browser: the dataset, training curves, metrics, confusion "
        "matrix, ROC, explained test images per class, and the run's trust and audit results."
    )
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    methods = left.multiselect(
        "Methods in the report",
        list(METHODS),
        default=[m for m in report.DEFAULT_METHODS if m in METHODS],
        format_func=lambda m: describe(m)["title"],
        key="report_methods",
    )
    per_class = right.number_input("Images per class", 1, 10, 2, key="report_per_class")
    if st.button("Build the report", key="report_build", icon=":material/description:", disabled=not methods):
        with st.spinner("Explaining the sample and writing the report…"):
            try:
                built = report.build_report(run, methods, per_class=int(per_class))
            except (report.ReportError, OSError, ValueError) as exc:
                st.error(f"The report could not be built: {exc}")
                built = None
        if built is not None:
            st.session_state[REPORT_STATE] = (run.id, list(methods), built)
    saved = st.session_state.get(REPORT_STATE)
    if saved and saved[0] == run.id:
        _, used, built = saved
        st.download_button(
            f"Download report.html ({len(built.encode()) / 2**20:.1f} MB; {', '.join(used)})",
            built.encode(),
            file_name=f"report_{run.id}.html",
            mime="text/html",
            key="report_download",
            on_click="ignore",
            icon=":material/download:",
        )


def mlflow_caption(tracked_run: runs.Run, failures: bool = False) -> None:
    """The run's MLflow run, linked, when it was tracked (and, with ``failures``, why tracking failed)."""
    tracked = tracking.link(tracked_run)
    if tracked is None:
        return
    if tracked["error"]:
        if failures:
            st.caption(f":material/warning: MLflow tracking failed: {tracked['error']}")
        return
    if tracked["run_id"]:
        run_ref = f"[`{tracked['run_id']}`]({tracked['url']})" if tracked["url"] else f"`{tracked['run_id']}`"
        opener = f" · open the store with `{tracked['ui_command']}`" if tracked["ui_command"] else ""
        st.caption(
            f"MLflow run {run_ref} · experiment {tracked['experiment_id']} · `{tracked['tracking_uri']}`{opener}"
        )
