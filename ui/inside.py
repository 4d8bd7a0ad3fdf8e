"""Streamlit glue for the "Inside the model" page: the image picker, cached feature maps, and class
visualisation in a background thread that the page follows with a fragment and can stop.

The thread only calls `core.inside.visualize` and writes plain fields of its `VisualizationJob`; it never
calls Streamlit. The job lives in session state (one per browser session); the model does not (the
thread holds it while it runs).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

from core import runs
from core.data import IMAGE_EXTENSIONS, ImageError, load_image
from core.evaluation import filter_predictions
from ui import common

JOB = "inside_job"
POLL_SECONDS = 0.5
DOUBLE_CLICK_SECONDS = 1.0  # a second Start this soon after the last one is the same click (the job may be done)


def pick_image(run: runs.Run, frame, height: int, width: int) -> tuple[np.ndarray, str]:
    """A test image of the run (filtered by class and outcome) or an upload, at the model's input size;
    shows why and stops the page when there is none."""
    source = st.radio("Image", ["Test image", "Upload"], horizontal=True, key="inside_image_source")
    if source == "Test image":
        left, right, pick = st.columns([1, 1, 2])
        class_filter = left.selectbox("True class", ["All", *run.class_names], key="inside_class_filter")
        outcome = right.selectbox("Outcome", ["All", "Correct", "Incorrect"], key="inside_outcome_filter")
        subset = filter_predictions(frame, None if class_filter == "All" else class_filter, outcome.lower())
        if subset.empty:
            st.info("No test image matches these filters.")
            st.stop()
        labels = {
            row.path: f"{Path(row.path).name} · true {row.true_class} · predicted {row.pred_class}"
            for row in subset.itertuples()
        }
        chosen = pick.selectbox("Test image", list(labels), format_func=labels.get, key="inside_test_image")
        try:
            return load_image(chosen, (height, width)), labels[chosen]
        except (ImageError, OSError) as exc:
            st.error(f"This test image cannot be read: {exc}")
            st.stop()
    upload = st.file_uploader(
        "Upload an image",
        type=[e.lstrip(".") for e in IMAGE_EXTENSIONS],
        key="inside_upload",
        help=f"Any image Pillow reads; it is resized to the model's input, {width}x{height} pixels.",
    )
    if upload is None:
        st.info("Choose an image file to look inside the model with.")
        st.stop()
    try:
        return load_image(upload.getvalue(), (height, width)), upload.name
    except ImageError as exc:
        st.error(f"**{upload.name}** cannot be used: {exc}")
        st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def _feature_maps(run_path: str, stamp: int, image: np.ndarray, layer_name: str):
    from core.inside import feature_maps

    return feature_maps(common.model(runs.read_run(run_path)), image, layer_name)


def feature_maps(run: runs.Run, image: np.ndarray, layer_name: str):
    """`core.inside.FeatureMaps` for one image; cached by (run, model file, image content, layer)."""
    return _feature_maps(str(run.path), common.model_stamp(run), image, layer_name)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Class visualisation in a background thread


@dataclass
class VisualizationJob:
    """One class visualisation: its settings, live progress, and its result or error."""

    run_id: str
    settings: object  # core.inside.VisualizationSettings
    stop_event: threading.Event = field(default_factory=threading.Event)
    step: int = 0
    score: float | None = None
    result: object = None  # core.inside.Visualization
    error: str | None = None
    thread: threading.Thread | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        self.stop_event.set()


def current_job() -> VisualizationJob | None:
    return st.session_state.get(JOB)


def start_job(run: runs.Run, net, settings, start_image=None) -> tuple[VisualizationJob, bool]:
    """Starts `core.inside.visualize` in a daemon thread; the job is kept in session state.

    Never restarts: while a job runs, or within DOUBLE_CLICK_SECONDS of the last start (a double click),
    nothing starts. Returns ``(job, started)``: the new job and True, or the current one and False.
    """
    from core.inside import InsideError, visualize

    previous = current_job()
    if previous is not None and (previous.running or time.monotonic() - previous.started_at < DOUBLE_CLICK_SECONDS):
        return previous, False

    job = VisualizationJob(run.id, settings)

    def progress(step: int, score: float) -> None:
        job.step, job.score = step, score

    def work() -> None:
        try:
            job.result = visualize(
                net,
                settings,
                progress=progress,
                should_stop=job.stop_event.is_set,
                image=start_image,
                class_names=run.class_names,
            )
        except InsideError as exc:
            job.error = str(exc)
        except Exception as exc:  # shown on the page, never a traceback
            job.error = f"The visualisation failed: {type(exc).__name__}: {exc}"

    job.thread = threading.Thread(target=work, name="class-visualisation", daemon=True)
    st.session_state[JOB] = job
    job.thread.start()
    return job, True


def score_curve(scores: np.ndarray):
    """The objective at each step, as a plotly line."""
    import plotly.graph_objects as go

    steps = np.arange(1, len(scores) + 1)
    fig = go.Figure(go.Scatter(x=steps, y=scores, mode="lines", name="score"))
    fig.update_layout(
        title="Score at each step (on the jittered image)",
        xaxis_title="step",
        yaxis_title="score",
        height=260,
        margin=dict(t=40, b=10),
    )
    return fig


def _settings_line(settings: dict) -> str:
    blur = (
        f"blur σ {settings['blur_sigma']:g} px every {settings['blur_every']} steps"
        if settings["blur_every"] and settings["blur_sigma"]
        else "no blur"
    )
    return (
        f"{settings['steps']} steps · learning rate {settings['learning_rate']:g} px/step · "
        f"jitter {settings['jitter']} px · {blur} · decay {settings['decay']:g} · "
        f"start noise {settings['noise']:g} · seed {settings['seed']}"
    )


def _show_result(job: VisualizationJob) -> None:
    from core.inside import upscale

    result = job.result
    st.success(
        f"{'Stopped after' if result.stopped else 'Finished'} {result.steps_done} of {result.settings['steps']} "
        f"steps in {result.seconds:.1f} s. Maximised: {result.objective}, from {result.initial_score:.3f} to "
        f"{result.final_score:.3f}."
    )
    left, right = st.columns([1, 2])
    side = max(result.image.shape[:2])
    enlarged = upscale(result.image, max(1, 256 // side))
    left.image(enlarged, caption=f"{result.objective} · {result.image.shape[1]}x{result.image.shape[0]} px")
    left.download_button(
        "Download PNG",
        png_bytes(result.image),
        file_name="class_visualisation.png",
        mime="image/png",
        key="inside_download_visualisation",
    )
    with right:
        if len(result.scores):
            st.plotly_chart(score_curve(result.scores), key="inside_score_curve")
        st.caption("Settings: " + _settings_line(result.settings))
        with st.expander("Settings used (JSON)"):
            st.json(result.settings)


def _job_panel() -> None:
    job = current_job()
    if job is None:
        return
    total = job.settings.steps
    if job.running:
        score = f" · score {job.score:.3f}" if job.score is not None else ""
        stopping = " · stopping…" if job.stop_event.is_set() else ""
        text = (
            f"Step {job.step} of {total}{score}{stopping}"
            if job.step
            else f"Compiling the gradient step (once per model and target kind)…{stopping}"
        )
        st.progress(min(1.0, job.step / total), text=text)
        st.button("Stop", key="inside_stop", icon=":material/stop:", on_click=job.stop)
        st.caption("Start is available again once this visualisation has finished or stopped.")
        return
    if job.error:
        st.error(job.error)
    elif job.result is not None:
        _show_result(job)


@st.fragment(run_every=POLL_SECONDS)
def _follow() -> None:
    """Reruns on its own every POLL_SECONDS while the job runs; the whole page once it has ended."""
    job = current_job()
    if job is None or not job.running:
        st.rerun()  # the Start button comes back, the result is shown, and the polling ends
    _job_panel()


def show_job(run: runs.Run) -> None:
    """Progress and a Stop button while the job runs (refreshed without rerunning the page), then its result
    (only on the run it was made for)."""
    job = current_job()
    if job is not None and job.running:
        _follow()
    elif job is not None and job.run_id == run.id:
        _job_panel()
