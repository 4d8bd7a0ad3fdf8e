"""Inside the model: one layer's feature maps for an image, and class visualisation by gradient ascent."""

import numpy as np
import streamlit as st

from core.runs import RunError
from ui import inside as ui_inside
from ui.common import conv_layers, model, predictions, require_run, setup_page

setup_page("Inside the model", ":material/layers:")
run = require_run()
class_names = run.class_names
try:
    frame = predictions(run)
except RunError as exc:
    st.error(str(exc))
    st.stop()
from core import inside
from core.models import ModelError, input_size
from core.visualize import COLORMAPS, colorize

try:
    net = model(run)
    height, width = input_size(net)
except ModelError as exc:
    st.error(f"The model of this run cannot be loaded: {exc}")
    st.stop()
layers = conv_layers(run)


def clamp(key: str, high: int) -> None:
    """Keeps a remembered widget value within a range that changed (another layer, another run)."""
    if key in st.session_state and st.session_state[key] > high:
        st.session_state[key] = high


# ---- feature maps ---------------------------------------------------------------------------------
st.subheader("Feature maps")
st.caption(
    "What one layer computes for one image: each tile is one channel's output. Channels are ranked by their "
    "**mean activation** over all positions, strongest first. Each tile is scaled to its own minimum and "
    "maximum, so compare channels by their numbers, not by their brightness."
)
image, caption = ui_inside.pick_image(run, frame, height, width)
if not layers:
    st.info(
        "This model's layers cannot be read (an imported SavedModel is opaque): import the `.keras` file to see "
        "feature maps. Class visualisation below still works."
    )
else:
    left, middle, right = st.columns([2, 1, 1])
    layer_name = left.selectbox(
        "Layer", layers, index=len(layers) - 1, key="inside_layer", help="Every layer with a 4-D output."
    )
    try:
        maps = ui_inside.feature_maps(run, image, layer_name)
    except inside.InsideError as exc:
        st.error(str(exc))
        st.stop()
    rows, cols, channels = maps.activations.shape
    # A fixed range, so that the count chosen stays when another layer is picked.
    wanted = middle.slider("Tiles (at most)", 1, 64, 16, key="inside_tiles", help="The strongest channels first.")
    count = min(int(wanted), channels)
    colormap = right.selectbox("Colormap", COLORMAPS, index=COLORMAPS.index("viridis"), key="inside_colormap")

    shown = maps.order[:count]
    tiles = inside.normalized_tiles(maps.activations, shown)
    scale = max(1, 112 // max(rows, cols))  # crisp tiles of about 112 px
    predicted = int(np.argmax(maps.probabilities))
    picture, tile_area = st.columns([1, 4])
    with picture:
        st.image(image, caption=caption, width="stretch")
        st.markdown(f"Predicted **{class_names[predicted]}** ({maps.probabilities[predicted]:.1%})")
        st.caption(f"`{layer_name}`: {rows}x{cols} positions, {channels} channels")
    with tile_area:
        st.markdown(f"**Top {count} of {channels} channels by mean activation** (#channel · mean)")
        st.image(
            [colorize(inside.upscale(tile, scale), colormap) for tile in tiles],
            caption=[f"#{c} · {maps.stats['mean'][c]:.3g}" for c in shown],
            width=112,
        )
        grid, _ = inside.tile_grid(tiles, scale=scale, padding=2)
        st.download_button(
            "Download the grid (PNG)",
            ui_inside.png_bytes(colorize(grid, colormap)),
            file_name=f"feature_maps_{layer_name.replace('/', '_')}.png",
            mime="image/png",
            key="inside_download_grid",
        )
    with st.expander("Channel statistics"):
        st.dataframe(
            {
                "rank": np.arange(1, count + 1),
                "channel": shown,
                **{name: maps.stats[name][shown] for name in ("mean", "max", "min", "std")},
                "active (> 0)": maps.stats["active"][shown],
            },
            hide_index=True,
            column_config={"active (> 0)": st.column_config.NumberColumn(format="percent")},
        )

# ---- class visualisation --------------------------------------------------------------------------
st.subheader("Class visualisation")
st.caption(
    "Gradient ascent on the input image (the DeepDream family): starting from grey plus a little noise, the "
    "pixels are changed step by step to raise a class score (before softmax) or one channel's mean activation. "
    "Jitter, blur and decay keep the picture from turning into high-frequency noise. Nothing runs until you press "
    "Start."
)
job = ui_inside.current_job()
running = job is not None and job.running
targets = ["A class score"] + (["A channel of a layer"] if layers else [])
first, second, third = st.columns(3)
target = first.radio("Maximise", targets, key="viz_target")
class_index, viz_layer, channel = 0, None, None
if target == "A class score":
    class_index = class_names.index(second.selectbox("Class", class_names, key="viz_class"))
else:
    viz_layer = second.selectbox("Layer", layers, index=len(layers) - 1, key="viz_layer")
    channel_total = inside.channel_count(net, viz_layer)
    clamp("viz_channel", channel_total - 1)
    channel = int(
        third.number_input(
            "Channel",
            0,
            channel_total - 1,
            0,
            key="viz_channel",
            help=f"0 to {channel_total - 1}: the # of a tile above when the same layer is shown.",
        )
    )
start_from = first.radio(
    "Start from", ["Grey + noise", "The image above"], key="viz_start", help="DeepDream starts from a picture."
)

row = st.columns(4)
steps = row[0].number_input("Steps", 1, 2000, 100, key="viz_steps")
learning_rate = row[1].number_input(
    "Learning rate (px/step)", 0.1, 50.0, 4.0, 0.5, key="viz_lr", help="The gradient is scaled to mean 1."
)
jitter_max = max(0, min(16, min(height, width) // 2))
clamp("viz_jitter", jitter_max)
jitter = row[2].slider("Jitter (px)", 0, jitter_max, min(2, jitter_max), key="viz_jitter") if jitter_max else 0
seed = row[3].number_input("Seed", 0, 2**31 - 1, 0, key="viz_seed")
row = st.columns(4)
blur_every = row[0].number_input("Blur every (steps, 0: never)", 0, 100, 4, key="viz_blur_every")
blur_sigma = row[1].slider("Blur sigma (px)", 0.0, float(inside.BLUR_RADIUS), 0.5, 0.1, key="viz_blur_sigma")
decay = row[2].number_input("Decay towards grey", 0.0, 0.5, 0.01, 0.005, format="%.3f", key="viz_decay")
noise = row[3].slider("Start noise (px)", 0.0, 64.0, 8.0, 1.0, key="viz_noise")

start = st.button(
    "Start",
    type="primary",
    icon=":material/play_arrow:",
    key="viz_start_button",
    disabled=running,
    help="A visualisation is running: stop it or let it finish first." if running else None,
)
if start and not running:  # a click that reaches a run where the job already runs starts nothing
    settings = inside.VisualizationSettings(
        target="class" if viz_layer is None else "channel",
        class_index=class_index if viz_layer is None else None,
        layer_name=viz_layer,
        channel=channel,
        steps=int(steps),
        learning_rate=float(learning_rate),
        jitter=int(jitter),
        blur_every=int(blur_every),
        blur_sigma=float(blur_sigma),
        decay=float(decay),
        noise=float(noise),
        seed=int(seed),
    )
    try:
        inside.check_settings(net, settings)
    except inside.InsideError as exc:
        st.error(str(exc))
    else:
        _, started = ui_inside.start_job(run, net, settings, image if start_from == "The image above" else None)
        if started:
            st.rerun()  # draw the page again: Start disabled, Stop and the progress shown
ui_inside.show_job(run)
