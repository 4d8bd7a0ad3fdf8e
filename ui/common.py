"""The only Streamlit glue: page setup, the shared run picker, cached loaders.

Cache keys include the run folder and the modification time and size of the file each result comes
from (the model for models and explanations), so a retrained, re-evaluated or re-imported run is
read again. TensorFlow is imported only inside the loaders that need it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from core import runs

SELECTED_RUN = "selected_run_id"
RUN_PARAM = "run"  # the query parameter that names the picked run
PICKER_KEY = "run_picker"
# Another page asks the Explainer to open an image: {"run": run id, "path": image path, "classes": [true, predicted]}
EXPLAIN_REQUEST = "explain_request"


# The browser tab's icon. Streamlit fetches a ``:material/...:`` page icon from fonts.gstatic.com, which
# fails offline (and reaches the internet): an emoji is drawn locally (an inline SVG), so it is used instead.
FAVICONS = {
    ":material/visibility:": "🔍",
    ":material/photo_library:": "🖼",
    ":material/show_chart:": "📈",
    ":material/grid_on:": "🔢",
    ":material/upload_file:": "📤",
    ":material/insights:": "📊",
    ":material/layers:": "🧱",
    ":material/policy:": "🛡",
    ":material/flag:": "🚩",
    ":material/scatter_plot:": "🔵",
}  # any other material icon gets 📊


def setup_page(title: str, icon: str = ":material/insights:") -> None:
    """Page config (title, a favicon that needs no network, wide layout), the title, and a sidebar
    warning for every run folder that cannot be read."""
    favicon = FAVICONS.get(icon, "📊") if icon.startswith(":material/") else icon
    st.set_page_config(page_title=f"{title} · XAI dashboard", page_icon=favicon, layout="wide")
    st.title(title)
    unreadable_runs_warning()


def unreadable_runs_warning() -> None:
    """Lists the run folders the run store cannot read, each with its reason (never a traceback)."""
    finder = getattr(runs, "unreadable_runs", None)
    if finder is None:
        return
    try:
        problems = finder(workspace())
    except Exception as exc:  # the workspace itself is unusable: say so, every page still renders
        st.sidebar.warning(f"The workspace {workspace()} cannot be read: {exc}")
        return
    if problems:
        lines = "\n".join(f"- `{Path(path).name}`: {reason}" for path, reason in problems)
        st.sidebar.warning(f"{len(problems)} run folder(s) cannot be read and are left out:\n{lines}")


def workspace() -> Path:
    return runs.workspace_dir()


def _remember_choice() -> None:
    st.session_state[SELECTED_RUN] = st.session_state[PICKER_KEY]


def short_labels(available: list[runs.Run], width: int = 18) -> dict[str, str]:
    """Labels that fit the sidebar: the run's name (cut to ``width``) and its test accuracy; the end of
    the id is added only where two runs share a name. The full id is shown under the picker."""
    names = {r.id: str(r.meta.get("name") or r.id) for r in available}
    repeated = {n for n in names.values() if list(names.values()).count(n) > 1}
    labels = {}
    for run in available:
        name = names[run.id]
        text = name if len(name) <= width else name[: width - 1] + "…"
        if name in repeated:
            text += f" #{run.id.rsplit('-', 1)[-1]}"
        acc = run.meta.get("test_accuracy")
        labels[run.id] = text + (f" · {acc:.3f}" if isinstance(acc, (int, float)) else "")
    return labels


def run_picker() -> runs.Run | None:
    """The sidebar run picker shared by every page (complete runs). The pick lasts the session and is kept in
    the address (``?run=ID``), so a reload or a shared link shows the same run; default: the newest."""
    available = [r for r in runs.list_runs(workspace()) if r.is_complete]
    if not available:
        return None
    by_id = {r.id: r for r in available}
    labels = short_labels(available)
    chosen = st.session_state.get(SELECTED_RUN)
    if chosen is None:  # a new session (a reload, a link): the run named in the address, if any
        linked = st.query_params.get(RUN_PARAM)
        chosen = linked
        if linked and linked not in by_id:
            st.sidebar.warning(
                f"The run `{linked[:60]}` in the address is not among the complete runs: showing the newest."
            )
    if chosen not in by_id:
        chosen = next((r.id for r in available if r.is_complete), available[0].id)
    st.session_state[SELECTED_RUN] = chosen
    st.session_state[PICKER_KEY] = chosen
    if st.query_params.get(RUN_PARAM) != chosen:  # the address names the run: a reload or a shared link keeps it
        st.query_params[RUN_PARAM] = chosen
    st.sidebar.selectbox(
        "Run",
        options=list(by_id),
        format_func=labels.__getitem__,
        key=PICKER_KEY,
        on_change=_remember_choice,
        help="Every page shows this run (its name and test accuracy; the full id is below). Runs live in the workspace's runs/ folder.",
    )
    picked = by_id[st.session_state[PICKER_KEY]]
    st.sidebar.caption(f"Run `{picked.id}` · {picked.meta.get('architecture', '?')}  \nWorkspace: `{workspace()}`")
    return picked


def require_run() -> runs.Run:
    """The picked run, or a message pointing to Home and ``st.stop()``."""
    run = run_picker()
    if run is None:
        st.info("There is no complete run yet. Open **Home** to create the demo run in one click.")
        st.page_link("Home.py", label="Go to Home", icon=":material/home:")
        st.stop()
    return run


def model_stamp(run: runs.Run) -> tuple:
    """Changes whenever the run's model changes (a cache key: `core.runs.Run.model_stamp`, () without a model)."""
    return run.model_stamp or ()


# --------------------------------------------------------------------------------------------------
# Cached loaders (keyed by run id and model modification time)


@st.cache_data(show_spinner=False, max_entries=32)
def _history(run_path: str, stamp: tuple):
    return runs.load_history(runs.read_run(run_path))


@st.cache_data(show_spinner=False, max_entries=32)
def _predictions(run_path: str, stamp: tuple, threshold_stamp: tuple):
    from core.explorer import decided_predictions

    run = runs.read_run(run_path)
    return decided_predictions(run, runs.load_predictions(run))


@st.cache_data(show_spinner=False, max_entries=32)
def _metrics(run_path: str, stamp: tuple, predictions_stamp: tuple, threshold_stamp: tuple):
    from core.explorer import decided_metrics

    run = runs.read_run(run_path)
    return decided_metrics(run, _predictions(run_path, predictions_stamp, threshold_stamp), runs.load_metrics(run))


def _file_stamp(run: runs.Run, name: str) -> tuple:
    """(modification time, size) of one run file: re-evaluating or retraining changes it."""
    try:
        stat = run.file(name).stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def history(run: runs.Run):
    return _history(str(run.path), _file_stamp(run, runs.HISTORY_FILE))


def predictions(run: runs.Run):
    """The test predictions as the run decides (its saved decision threshold, if any)."""
    return _predictions(str(run.path), _file_stamp(run, runs.PREDICTIONS_FILE), _threshold_stamp(run))


def metrics(run: runs.Run):
    """metrics.json, its decision-dependent numbers under the run's saved threshold, if any."""
    return _metrics(
        str(run.path),
        _file_stamp(run, runs.METRICS_FILE),
        _file_stamp(run, runs.PREDICTIONS_FILE),
        _threshold_stamp(run),
    )


def _threshold_stamp(run: runs.Run) -> tuple:
    from core.explorer import THRESHOLD_FILE

    return _file_stamp(run, THRESHOLD_FILE)


@st.cache_data(show_spinner="Scanning the dataset…", max_entries=16)
def _dataset_index(
    dataset_path: str, signature: str, seed: int, group_split: bool, val_fraction: float, test_fraction: float
):
    from core.data import scan_dataset

    return scan_dataset(dataset_path, val_fraction, test_fraction, seed=seed, group_split=group_split)


def dataset_index(
    dataset_path: str, seed: int, group_split: bool = False, val_fraction: float = 0.15, test_fraction: float = 0.15
):
    """The scanned dataset, cached by the folder's signature (names, sizes, modification times): a file
    added, removed or changed makes a later call scan again (within 10 s; at once after a Rescan)."""
    signature = _folder_signature(str(dataset_path))
    return _dataset_index(str(dataset_path), signature, seed, group_split, val_fraction, test_fraction)


@st.cache_data(show_spinner=False, max_entries=16, ttl=10)
def _folder_signature(dataset_path: str) -> str:
    """The folder's signature, taken again at most every 10 s (a large tree costs about 0.1 ms per file),
    so a change shows within 10 s, or at once with Rescan."""
    from core.data import folder_signature

    return folder_signature(dataset_path)


def clear_dataset_scans() -> None:
    """Forgets every cached scan and signature (the Dataset page's Rescan button)."""
    _folder_signature.clear()
    _dataset_index.clear()


def allowed_folder(path) -> Path:
    """``path`` resolved if it lies inside the data roots; raises `core.paths.DataRootError` otherwise."""
    from core.paths import data_roots, resolve_within

    return resolve_within(path, data_roots(workspace()))


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _model(run_path: str, stamp: int):
    from core.model_import import load_run_model

    return load_run_model(run_path)


def model(run: runs.Run):
    """The run's Keras model, loaded once per process (never stored in session state)."""
    return _model(str(run.path), model_stamp(run))


@st.cache_data(show_spinner=False, max_entries=8)
def _conv_layers(run_path: str, stamp: int) -> list[str]:
    from core.explain import conv_layer_names

    return conv_layer_names(_model(run_path, stamp))


def conv_layers(run: runs.Run) -> list[str]:
    """Every layer with a 4-D output, nested backbones included, in network order."""
    return _conv_layers(str(run.path), model_stamp(run))


@st.cache_data(show_spinner=False, max_entries=256)
def _explanations(run_path: str, stamp: int, image: np.ndarray, methods: tuple, class_index, params_json: str):
    from core.compare import explain_side_by_side

    return explain_side_by_side(_model(run_path, stamp), image, list(methods), class_index, json.loads(params_json))


def explanations(run: runs.Run, image: np.ndarray, methods, class_index, params: dict):
    """Prediction and maps for one image; cached by (run, model, image content, methods, class, params)."""
    return _explanations(
        str(run.path), model_stamp(run), image, tuple(methods), class_index, json.dumps(params, sort_keys=True)
    )


def folder_input(label: str, key: str, default: str = "", file_suffixes: tuple[str, ...] = ()) -> Path | None:
    """A text input for a folder (or a file with one of ``file_suffixes``) inside the data roots; shows
    the reason and returns None when the path is refused."""
    from core.paths import DataRootError, data_roots, resolve_within

    roots = data_roots(workspace())
    text = st.text_input(label, value=default, key=key, help="Allowed: " + ", ".join(str(r) for r in roots))
    if not text.strip():
        return None
    try:
        path = resolve_within(text, roots)
    except DataRootError as exc:
        st.error(str(exc))
        return None
    if path.is_dir() or (path.is_file() and path.suffix.lower() in file_suffixes):
        return path
    expected = "a folder" + (f" or a {'/'.join(file_suffixes)} file" if file_suffixes else "")
    st.error(f"{path} is not {expected}." if path.exists() else f"{path} does not exist.")
    return None
