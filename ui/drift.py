"""The Training page's explanation drift: each probe image's Grad-CAM map after every epoch, as a film strip."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core import drift, runs

MAX_FRAMES = 10


@st.cache_data(show_spinner=False, max_entries=16)
def _load(run_path: str, stamp: tuple) -> dict | None:
    return drift.load_drift(runs.read_run(run_path))


def frames(epochs: list[int], limit: int = MAX_FRAMES) -> list[int]:
    """Indices of at most ``limit`` epochs, evenly spread, always the first and the last."""
    if len(epochs) <= limit:
        return list(range(len(epochs)))
    return sorted({int(round(i)) for i in np.linspace(0, len(epochs) - 1, limit)})


def render_drift(run: runs.Run) -> None:
    from core.data import ImageError, load_image
    from core.visualize import overlay

    try:
        stat = run.file(drift.DRIFT_MAPS_FILE).stat()
    except OSError:
        st.caption("This run has no explanation drift (it was imported, or trained before it was recorded).")
        return
    report = _load(str(run.path), (stat.st_mtime_ns, stat.st_size))
    if not report or not report.get("epochs"):
        st.caption("No explanation drift was recorded for this run.")
        return
    maps, epochs = report["maps"], report["epochs"]
    chosen = frames(epochs)
    st.caption(
        f"{report['method']} map of each probe test image for its true class after each epoch "
        f"({len(epochs)} epochs{', ' + str(len(chosen)) + ' shown' if len(chosen) < len(epochs) else ''}). "
        "A map that settles early on the object is a good sign; one that wanders to the background is not."
    )
    if report.get("error"):
        st.warning(f"The drift stopped: {report['error']}")
    names = run.class_names
    height, width = maps.shape[2:]
    for p, (path, class_index) in enumerate(zip(report["paths"], report["class_indices"])):
        try:
            image = load_image(path, (height, width))
        except (ImageError, OSError):
            continue
        label = names[class_index] if 0 <= class_index < len(names) else class_index
        st.markdown(f"`{path.rsplit('/', 1)[-1]}` · {label}")
        columns = st.columns(len(chosen))
        for column, e in zip(columns, chosen):
            column.image(overlay(image, np.clip(maps[e, p], 0, 1)), caption=f"epoch {epochs[e]}", width="stretch")
