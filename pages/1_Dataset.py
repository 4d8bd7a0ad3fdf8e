"""Dataset: class distribution per split, samples per class, image sizes and colour modes."""

import pandas as pd
import streamlit as st

from core import charts
from core.data import DatasetError, ImageError, load_thumbnail
from core.paths import DataRootError
from core.text import count
from ui.common import allowed_folder, clear_dataset_scans, dataset_index, folder_input, run_picker, setup_page

setup_page("Dataset", ":material/photo_library:")
run = run_picker()
choices = (["The current run's dataset"] if run else []) + ["Another folder"]
source = st.radio("Dataset", choices, horizontal=True, key="dataset_source")
if source == "Another folder":
    folder = folder_input("Image folder", "dataset_folder")
    group_split = st.checkbox("One split per sub-folder (patient)", key="dataset_group_split")
    if folder is None:
        st.info("Type the path of an image folder: DIR/<class>/... or DIR/{train,val,test}/<class>/...")
        st.stop()
    folder, seed, fractions = str(folder), 0, (0.15, 0.15)
else:  # the split settings the run was trained with
    hp = run.meta.get("hyperparameters") or {}
    seed, group_split = run.meta.get("seed", 0), hp.get("group_split", False)
    fractions = (hp.get("val_fraction", 0.15), hp.get("test_fraction", 0.15))
    try:  # the run's recorded path gets the same data-root check as a typed one
        folder = str(allowed_folder(run.meta.get("dataset") or ""))
    except DataRootError as exc:
        st.error(f"The run's dataset cannot be shown: {exc}")
        st.stop()
if st.button(
    "Rescan", icon=":material/refresh:", key="dataset_rescan", help="Read the folder again (files added or changed)"
):
    clear_dataset_scans()
try:
    index = dataset_index(folder, seed, group_split, *fractions)
except DatasetError as exc:
    st.error(f"This folder cannot be used as a dataset: {exc}")
    st.stop()
summary = index.summary()

st.caption(
    f"`{summary['root']}` · {summary['images']} images · {len(index.class_names)} classes · {summary['layout']} layout"
)
if summary["imbalance_ratio"] and summary["imbalance_ratio"] > 1.5:
    st.warning(
        f"Class imbalance: the largest class has {summary['imbalance_ratio']:.1f}x the images of the smallest. "
        "Accuracy alone can mislead; read per-class recall on the Evaluation page."
    )

st.subheader("Class distribution")
counts = index.counts()
st.plotly_chart(charts.class_distribution(counts), key="class_distribution")
st.dataframe(counts.assign(total=counts.sum(axis=1)), key="counts_table")

st.subheader("Image sizes and colour modes")
left, right = st.columns(2)
left.dataframe(pd.DataFrame(list(summary["image_sizes"].items()), columns=["size (WxH)", "images"]), hide_index=True)
right.dataframe(pd.DataFrame(list(summary["colour_modes"].items()), columns=["colour mode", "images"]), hide_index=True)
if summary["skipped"]:
    with st.expander(f"{count(len(summary['skipped']), 'file')} skipped"):
        st.dataframe(pd.DataFrame(summary["skipped"]), hide_index=True)

st.subheader("Samples per class")
per_class = st.slider("Samples per class", 2, 12, 6, key="samples_per_class")
for class_name in index.class_names:
    rows = index.records[index.records["class_name"] == class_name].head(per_class)
    st.markdown(f"**{class_name}**")
    columns = st.columns(per_class)
    for column, path in zip(columns, rows["path"]):
        try:
            column.image(load_thumbnail(path), width="stretch")
        except (ImageError, OSError) as exc:
            column.caption(f"unreadable now: {exc}")
