"""Streamlit glue of the Explainer page: parameter widgets built from `describe`, cached explanations,
one method's cell of the grid, downloads. No method is named here: everything comes from the registry.

Cache key of an explanation: (run folder, model stamp, image digest, method, class, parameters), so a
new model, image, class or parameter computes again and nothing else does (one entry per method: adding a
method to the grid does not recompute the others).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import streamlit as st

from ui import common

NONE_LABEL = "None (default)"


# ---- parameter widgets ---------------------------------------------------------------------------


def _clamp(value, low, high):
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value


def _number(label: str, entry: dict, key: str):
    """An int or float widget within the entry's bounds: a slider when both are known, else a number box."""
    integer = entry["kind"] == "int"
    cast = int if integer else float
    low = None if entry["minimum"] is None else cast(entry["minimum"])
    high = None if entry["maximum"] is None else cast(entry["maximum"])
    start = entry["default"] if entry["default"] is not None else (low if low is not None else cast(1))
    start = _clamp(cast(start), low, high)
    if key in st.session_state:  # a value kept from another run or image size: bring it into the new bounds
        kept = st.session_state[key]
        if isinstance(kept, (int, float)) and _clamp(kept, low, high) != kept:
            st.session_state[key] = _clamp(cast(kept), low, high)
    if low is not None and high is not None and high > low and (not integer or high - low <= 2048):
        step = 1 if integer else (high - low) / 100
        return st.slider(label, low, high, start, step=step, key=key, help=entry["help"])
    return st.number_input(
        label, min_value=low, max_value=high, value=start, step=1 if integer else None, key=key, help=entry["help"]
    )


def _pick(label: str, options: list, default, key: str, help_text: str, names=None):
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]  # e.g. a layer of the previous run's model
    index = options.index(default) if default in options else 0
    names = names or {}
    return st.selectbox(
        label, options, index=index, key=key, help=help_text, format_func=lambda v: names.get(v, str(v))
    )


def param_widgets(method: str, info: dict, layers: list[str]) -> dict:
    """One widget per parameter of ``info`` (`describe(method, input_size)`); returns ``{name: value}``.

    int/float: a slider within both bounds, else a number box; bool: a checkbox; choice: a select box;
    layer: a select box of the model's 4-D layers; nullable: None offered (a select box entry, or a
    checkbox for numbers). Widget keys: ``param_<method>_<name>``.
    """
    values = {}
    for name, entry in info["params"].items():
        key, kind, help_text = f"param_{method}_{name}", entry["kind"], entry["help"]
        if kind == "layer":
            options = ([None] if entry["nullable"] else []) + list(layers)
            values[name] = _pick(name, options, entry["default"], key, help_text, {None: NONE_LABEL})
        elif kind == "choice":
            options = list(entry["choices"]) + ([None] if entry["nullable"] and None not in entry["choices"] else [])
            values[name] = _pick(name, options, entry["default"], key, help_text, {None: "None"})
        elif kind == "bool":
            values[name] = st.checkbox(name, value=bool(entry["default"]), key=key, help=help_text)
        else:
            if entry["nullable"] and st.checkbox(
                f"{name} = None", value=entry["default"] is None, key=f"{key}_none", help=help_text
            ):
                values[name] = None
                continue
            values[name] = _number(name, entry, key)
    return values


# ---- cached explanations --------------------------------------------------------------------------


def image_digest(image: np.ndarray) -> str:
    """A content hash of an image (shape included), used in cache keys instead of the pixels."""
    array = np.ascontiguousarray(image)
    return hashlib.sha256(repr((array.shape, str(array.dtype))).encode() + array.tobytes()).hexdigest()


@st.cache_data(show_spinner=False, max_entries=64)
def _probabilities(run_path: str, stamp: int, digest: str, _image: np.ndarray) -> np.ndarray:
    from core.models import predict_proba

    return predict_proba(common._model(run_path, stamp), np.asarray(_image, np.float32)[None])[0]


@st.cache_data(show_spinner=False, max_entries=512)
def _explained(run_path: str, stamp: int, digest: str, _image: np.ndarray, method: str, target: int, params: str):
    from core.compare import explain_side_by_side

    model = common._model(run_path, stamp)
    _, (result,) = explain_side_by_side(model, _image, [method], target, {method: json.loads(params)})
    return result


def probabilities(run, image: np.ndarray) -> np.ndarray:
    """Class probabilities of ``image`` (at the model's input size), cached per (run, model, image)."""
    return _probabilities(str(run.path), common.model_stamp(run), image_digest(image), image)


def explanations(run, image: np.ndarray, methods, target: int, params: dict) -> list:
    """One `core.compare.MethodResult` per method, each cached on its own."""
    stamp, digest = common.model_stamp(run), image_digest(image)
    return [
        _explained(
            str(run.path), stamp, digest, image, method, int(target), json.dumps(params.get(method, {}), sort_keys=True)
        )
        for method in methods
    ]


# ---- rendering ------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=8)
def colour_bar(colormap: str) -> np.ndarray:
    from core.visualize import colorbar

    return colorbar(colormap, width=256, height=10)


def _number_text(value: float) -> str:
    return f"{value:.3g}"


def method_cell(
    result, info: dict, picture: np.ndarray, alpha: float, colormap: str, key: str, mask_outline=None
) -> None:
    """One method's cell: title, overlay (with the ground-truth mask's outline, when given: a boolean mask
    at the picture's size) and heatmap at the picture's aspect, colour bar, raw range and units (flagged
    when there is no signal), time, what it shows, PNG downloads (short labels that fit three columns)."""
    from core.visualize import colorize, overlay, png_bytes, resize_map

    st.markdown(f"**{info['title']}**")
    if result.error:
        st.error(result.error)
        st.caption(info["description"])
        return
    saliency = resize_map(result.saliency, picture.shape[:2])
    blended, heatmap = overlay(picture, saliency, alpha, colormap), colorize(saliency, colormap)
    if mask_outline is not None:
        from core.masks import draw_outline

        blended = draw_outline(blended, mask_outline)
    left, right = st.columns(2, gap="small")
    left.image(blended, caption="overlay", width="stretch")
    right.image(heatmap, caption="heatmap", width="stretch")
    st.image(colour_bar(colormap), width="stretch")
    low, high = result.raw_range
    signed = " (signed)" if result.signed and "signed" not in result.units else ""
    st.caption(f"Raw range [{_number_text(low)}, {_number_text(high)}]{signed} · {result.units}")
    if result.note:
        st.warning(result.note, icon=":material/warning:")
    st.caption(f"{result.seconds * 1000:.0f} ms · {info['description']}")
    left, right = st.columns(2, gap="small")
    left.download_button(
        "Overlay",
        png_bytes(blended),
        file_name=f"{result.method}_overlay.png",
        mime="image/png",
        key=f"{key}_overlay_png",
        on_click="ignore",
        icon=":material/download:",
        help="Download the overlay as a PNG file, at the picture's size.",
        width="stretch",
    )
    right.download_button(
        "Heatmap",
        png_bytes(heatmap),
        file_name=f"{result.method}_heatmap.png",
        mime="image/png",
        key=f"{key}_heatmap_png",
        on_click="ignore",
        icon=":material/download:",
        help="Download the heatmap as a PNG file, at the picture's size.",
        width="stretch",
    )


# ---- evidence under each map: faithfulness (deletion / insertion) and localisation -----------------


@st.cache_data(show_spinner=False, max_entries=512)
def _faithfulness(run_path: str, stamp: int, digest: str, _image: np.ndarray, target: int, key: str, _saliency):
    from core import trust

    model = common._model(run_path, stamp)
    return trust.deletion_insertion(model, _image, _saliency, target)


@st.cache_data(show_spinner=False, max_entries=128)
def _random_reference(run_path: str, stamp: int, digest: str, _image: np.ndarray, target: int):
    from core import trust

    return trust.random_reference(common._model(run_path, stamp), _image, target)


def faithfulness(run, image: np.ndarray, results, target: int) -> tuple[dict, dict]:
    """Deletion and insertion (Petsiuk et al. 2018, `core.trust`) of every result's map, each cached on its
    own (keyed by the method and its parameters), and the random map's reference: ``({method: scores},
    reference)``. Methods that failed are left out."""
    stamp, digest = common.model_stamp(run), image_digest(image)
    scores = {
        result.method: _faithfulness(
            str(run.path),
            stamp,
            digest,
            image,
            int(target),
            f"{result.method}:{json.dumps(result.params, sort_keys=True, default=str)}",
            result.saliency,
        )
        for result in results
        if result.saliency is not None
    }
    return scores, _random_reference(str(run.path), stamp, digest, image, int(target))


def ranking_text(scores: dict, reference: dict, infos: dict) -> str:
    """One line: the shown methods ranked by insertion - deletion, with the random map's difference."""
    from core.trust import rank_methods

    ranked = rank_methods(scores)
    if not ranked:
        return ""
    random_gap = reference["insertion_auc"] - reference["deletion_auc"]
    parts = [f"{infos[m]['title']} {gap:+.2f}" for m, gap in ranked]
    return (
        "Faithfulness ranking (insertion AUC − deletion AUC, higher is better): "
        + " > ".join(parts)
        + f" · random map {random_gap:+.2f}"
    )


CURVES_KEY = ":red[deletion] · :blue[insertion] · solid: this map · dotted: a random map"
"""The one line under each curves chart that names its four lines (the Audit page's Trust curves draw the same)."""


def curves_chart(score: dict, reference: dict):
    """A small plot of one map's deletion and insertion curves, the random map's as dotted lines: the same
    colours, dashes and names as the Audit page's Trust curves (`ui.audit.curves_figure`). Too narrow for a
    legend at three columns: `CURVES_KEY` names the lines under it."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = score["fractions"]
    for kind, colour in (("deletion", "#d62728"), ("insertion", "#1f77b4")):
        fig.add_trace(go.Scatter(x=x, y=score[f"{kind}_curve"], name=kind, line=dict(color=colour)))
        fig.add_trace(
            go.Scatter(
                x=x, y=reference[f"{kind}_curve"], name=f"{kind}, random map", line=dict(color=colour, dash="dot")
            )
        )
    fig.update_layout(
        height=170,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis_title="fraction of pixels changed",
        yaxis_title="p(class)",
        yaxis_range=[0, 1.02],
        showlegend=False,
        font=dict(size=10),
    )
    return fig


def evidence(result, score: dict | None, reference: dict | None, mask, key: str) -> None:
    """Under a method's maps: its deletion and insertion AUCs beside the random map's, the curves, and,
    where the image has a ground-truth mask, the localisation scores."""
    from core import trust

    if score is not None and reference is not None:
        st.caption(
            f"Deletion AUC **{score['deletion_auc']:.3f}** (random {reference['deletion_auc']:.3f}, lower is "
            f"better) · insertion AUC **{score['insertion_auc']:.3f}** (random {reference['insertion_auc']:.3f}, "
            "higher is better)"
        )
        st.plotly_chart(curves_chart(score, reference), key=f"{key}_curves", config={"displayModeBar": False})
        st.caption(CURVES_KEY)
    if mask is not None and result.saliency is not None and mask.any():
        scores = trust.localisation(result.saliency, mask)
        st.caption(
            f"Against the mask: pointing game **{'hit' if scores['pointing_game'] else 'miss'}** · energy inside "
            f"**{scores['energy_pointing_game']:.0%}** (the mask covers {mask.mean():.0%}) · top-k IoU "
            f"**{scores['top_k_iou']:.2f}**"
        )
