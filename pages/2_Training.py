"""Training: curves of the current run, a new training run in the background, and runs compared."""

import pandas as pd
import streamlit as st

from core import jobs, runs
from core.catalog import ARCHITECTURE_NAMES
from core.data import DatasetError
from ui import charts
from ui.common import dataset_index, folder_input, history, run_picker, setup_page, workspace

setup_page("Training", ":material/show_chart:")
run = run_picker()
curves_tab, new_tab, compare_tab = st.tabs(["Curves", "Train a new model", "Compare runs"])

# ---- curves of the picked run ---------------------------------------------------------------------
with curves_tab:
    if run is None:
        st.info("No complete run yet: train one in **Train a new model**, or create the demo on **Home**.")
    else:
        try:
            frame = history(run)
        except runs.RunError:
            frame = None
            st.info(f"Run {run.id} was {run.meta.get('source', 'imported')}: it has no training history.")
        if frame is not None:
            best = frame.loc[frame["val_loss"].idxmin()] if "val_loss" in frame else None
            cols = st.columns(3)
            cols[0].metric("Epochs trained", len(frame))
            if best is not None:
                cols[1].metric("Best validation loss", f"{best['val_loss']:.4f}", help=f"epoch {int(best['epoch'])}")
                cols[2].metric("Validation accuracy there", f"{best.get('val_accuracy', float('nan')):.3f}")
            left, right = st.columns(2)
            left.plotly_chart(charts.training_curves(frame, "loss"), key="loss_curve")
            right.plotly_chart(charts.training_curves(frame, "accuracy"), key="accuracy_curve")
        st.subheader("Hyper-parameters")
        params = dict(run.meta.get("hyperparameters", {}))
        params.update({"preprocessing": run.meta.get("preprocessing"), "input_size": str(run.meta.get("input_size"))})
        if run.meta.get("class_weights"):
            params["class weights used"] = run.meta["class_weights"]
        st.dataframe(
            pd.DataFrame({"value": [str(v) for v in params.values()]}, index=list(params)), key="hyperparameters"
        )
        if frame is not None:
            with st.expander("History table (learning rate per epoch included)"):
                st.dataframe(frame, hide_index=True)
        with st.expander("Library versions and timings"):
            st.json(
                {
                    "durations": run.meta.get("durations"),
                    "device": run.meta.get("device"),
                    "versions": run.meta.get("library_versions"),
                }
            )

# ---- a new run in a background process ------------------------------------------------------------
with new_tab:
    default_folder = run.meta.get("dataset", "") if run else ""
    folder = folder_input("Image folder", "train_folder", default_folder)
    with st.form("new_run"):
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", ARCHITECTURE_NAMES, key="train_arch")
        weights = c2.radio(
            "Weights",
            ["imagenet", "none"],
            horizontal=True,
            key="train_weights",
            help="imagenet: pre-trained, frozen first then fine-tuned (needs the weights file); none: from scratch",
        )
        image_size = c3.number_input("Image size (px)", 16, 1024, 224, key="train_img_size")
        epochs = c1.number_input("Epochs", 1, 500, 10, key="train_epochs")
        fine_tune = c2.number_input(
            "Fine-tuning epochs",
            0,
            500,
            0,
            key="train_fine_tune",
            help="A second phase with the top of the backbone unfrozen at a 10x lower learning rate",
        )
        batch_size = c3.number_input("Batch size", 1, 1024, 32, key="train_batch")
        learning_rate = c1.number_input("Learning rate", 1e-6, 0.5, 1e-3, format="%.5f", key="train_lr")
        class_weights = c2.selectbox("Class weights", ["when imbalanced", "always"], key="train_class_weights")
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
        augment = c1.checkbox("Augment (flip, crop, zoom)", key="train_augment")
        group_split = c2.checkbox("One split per sub-folder (patient)", key="train_group_split")
        name = c3.text_input("Run name", key="train_name")
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        from core.training import TrainingConfig  # imports TensorFlow: only when a run is started

        config = TrainingConfig(
            arch=arch,
            image_size=int(image_size),
            epochs=int(epochs),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            seed=int(seed),
            weights=None if weights == "none" else weights,
            augment=augment,
            class_weights="auto" if class_weights == "always" else None,
            fine_tune_epochs=int(fine_tune),
            group_split=group_split,
        )
        try:
            if folder is None:
                raise ValueError("Choose an image folder first.")
            config.validate()
            index = dataset_index(str(folder), int(seed))
        except (ValueError, DatasetError) as exc:
            st.error(str(exc))
        else:
            jobs.start_training(workspace(), folder, config, name.strip() or None)
            st.success(f"Training started on {len(index.records)} images of {len(index.class_names)} classes.")

    @st.fragment(run_every=2.0)
    def live_runs():
        active = jobs.active_runs(workspace())
        if not active:
            st.caption("No run is training now.")
            return
        for live in active:
            summary = jobs.progress_summary(live)
            st.markdown(f"**{live.id}** · {live.meta.get('architecture')} on `{live.meta.get('dataset')}`")
            st.progress(summary["fraction"], text=summary["message"])
            try:
                so_far = runs.load_history(live)
                left, right = st.columns(2)
                left.plotly_chart(charts.training_curves(so_far, "loss"), key=f"live_loss_{live.id}")
                right.plotly_chart(charts.training_curves(so_far, "accuracy"), key=f"live_acc_{live.id}")
            except (runs.RunError, ValueError):
                pass
            if st.button("Cancel", key=f"cancel_{live.id}", icon=":material/stop:"):
                jobs.cancel(live)
                st.toast(f"Cancelling {live.id} after its current batch")

    st.subheader("Training now")
    live_runs()
    recent = [r for r in runs.list_runs(workspace()) if r.status in (runs.FAILED, runs.CANCELLED)][:5]
    if recent:
        with st.expander(f"{len(recent)} recent failed or cancelled runs"):
            for failed in recent:
                st.markdown(f"**{failed.id}** · {failed.status}: {failed.meta.get('error', 'no reason recorded')}")

# ---- compare runs -------------------------------------------------------------------------------
with compare_tab:
    complete = [r for r in runs.list_runs(workspace()) if r.is_complete]
    if len(complete) < 1:
        st.info("No complete run to compare yet.")
    else:
        by_id = {r.id: r for r in complete}
        chosen = st.multiselect("Runs", list(by_id), default=list(by_id)[:3], key="compare_runs")
        selected = [by_id[i] for i in chosen]
        if selected:
            st.dataframe(runs.comparison_table(selected).style.format(precision=3, na_rep=""), key="compare_table")
            combined = runs.combined_history(selected)
            if not combined.empty:
                left, right = st.columns(2)
                left.plotly_chart(charts.compare_curves(combined, "val_accuracy"), key="compare_val_accuracy")
                right.plotly_chart(charts.compare_curves(combined, "val_loss"), key="compare_val_loss")
