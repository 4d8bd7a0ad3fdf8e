"""Training: curves of the current run, new training jobs in the background (each with its outcome), and
runs compared like with like."""

import contextlib

import pandas as pd
import streamlit as st

from core import charts, jobs, runs
from core.catalog import ARCHITECTURE_NAMES, ARCHITECTURE_SPECS, imagenet_weights_status
from core.data import DatasetError
from core.distribute import LR_RULES, STRATEGIES
from core.split_checks import split_problems, split_warnings
from core.text import count
from ui.common import SELECTED_RUN, dataset_index, folder_input, history, run_picker, setup_page, workspace
from ui.drift import render_drift
from ui.serving import mlflow_caption

REQUEST_KEY = "train_request_id"  # one id per form submission: a double click or rerun starts one job
STARTED_KEY = "train_started_jobs"  # jobs this session started, to show their outcome
FLASH_KEY = "train_flash"  # (job id, what the start said, split warnings), shown above the jobs
PRETRAINED = [name for name, spec in ARCHITECTURE_SPECS.items() if spec[0] is not None]


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
        except runs.RunError as exc:
            frame = None
            if run.file(runs.HISTORY_FILE).exists():
                st.warning(str(exc))
            else:
                st.info(f"Run {run.id} was {run.meta.get('source', 'imported')}: it has no training history.")
        if frame is not None:
            has_val = "val_loss" in frame and frame["val_loss"].notna().any()
            best = frame.loc[frame["val_loss"].idxmin()] if has_val else None
            cols = st.columns(3)
            cols[0].metric("Epochs trained", len(frame))
            if best is not None:
                cols[1].metric("Best validation loss", f"{best['val_loss']:.4f}", help=f"epoch {int(best['epoch'])}")
                cols[2].metric("Validation accuracy there", f"{best.get('val_accuracy', float('nan')):.3f}")
            left, right = st.columns(2)
            left.plotly_chart(charts.training_curves(frame, "loss"), key="loss_curve")
            right.plotly_chart(charts.training_curves(frame, "accuracy"), key="accuracy_curve")
            with st.expander("Explanation drift: what the model looked at, epoch by epoch"):
                render_drift(run)
        for message in run.meta.get("warnings") or []:
            st.warning(message)
        mlflow_caption(run)
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
                    "distribution": run.meta.get("distribution"),
                    "input_pipeline": run.meta.get("input_pipeline"),
                    "versions": run.meta.get("library_versions"),
                }
            )


# ---- new runs: one background job per form submission, each followed to its outcome ------------------
def _open_run(run_id: str, page: str) -> None:
    st.session_state[SELECTED_RUN] = run_id
    st.switch_page(page)


def _job_card(job: jobs.Job) -> None:
    """One job: progress and Cancel while it runs; its outcome when it ended."""
    with st.container(border=True):
        if job.is_active:
            progress = jobs.job_progress(workspace(), job)
            cancelling = jobs.cancel_requested(workspace(), job.id)
            st.markdown(f"**{job.title}** · {'cancelling…' if cancelling else job.status}")
            st.progress(progress["fraction"], text=progress["message"])
            if job.run_id:
                try:
                    so_far = runs.load_history(runs.read_run(runs.runs_dir(workspace()) / job.run_id))
                    left, right = st.columns(2)
                    left.plotly_chart(charts.training_curves(so_far, "loss"), key=f"live_loss_{job.id}")
                    right.plotly_chart(charts.training_curves(so_far, "accuracy"), key=f"live_acc_{job.id}")
                except (runs.RunError, ValueError, KeyError):
                    pass
            if st.button("Cancel", key=f"cancel_{job.id}", icon=":material/stop:", disabled=cancelling):
                jobs.cancel_job(workspace(), job)
                st.toast(f"Cancelling {job.title}: it stops after its current batch.")
            return
        if job.status == jobs.COMPLETE:
            accuracy = job.record.get("test_accuracy")
            text = f"{accuracy:.3f}" if isinstance(accuracy, (int, float)) else "n/a"
            st.success(f"**{job.title}** finished: test accuracy {text} (run `{job.run_id}`).")
            with contextlib.suppress(runs.RunError):
                mlflow_caption(runs.read_run(runs.runs_dir(workspace()) / job.run_id), failures=True)
            cols = st.columns(4)
            cols[0].button(
                "Evaluation",
                key=f"eval_{job.id}",
                icon=":material/grid_on:",
                on_click=_open_run,
                args=(job.run_id, "pages/3_Evaluation.py"),
            )
            cols[1].button(
                "Explainer",
                key=f"explain_{job.id}",
                icon=":material/visibility:",
                on_click=_open_run,
                args=(job.run_id, "pages/4_Explainer.py"),
            )
        elif job.status == jobs.CANCELLED:
            st.info(f"**{job.title}** was cancelled: {job.error or 'by the user'}")
            cols = st.columns(4)
        else:
            st.error(f"**{job.title}** failed: {job.error or 'no reason recorded'}")
            with st.expander("Last lines of its log"):
                st.code(jobs.read_log_tail(workspace(), job.id) or "(empty log)", language="text")
            cols = st.columns(4)
        cols[-1].button(
            "Dismiss",
            key=f"dismiss_{job.id}",
            icon=":material/close:",
            on_click=jobs.dismiss,
            args=(workspace(), job.id),
        )


@st.fragment(run_every=2.0)
def live_jobs() -> None:
    """Every job of the workspace that is running, or that ended and was not dismissed."""
    shown = [j for j in jobs.list_jobs(workspace(), limit=12) if j.is_active or not j.record.get("dismissed")]
    if not shown:
        st.caption("No training job yet. Start one above; it keeps running if you close the page.")
    for job in shown:
        _job_card(job)
    # A job that changed state since the last look (running, ended): rerun the page, so that the Start
    # button comes back and the run picker and the comparison show the new run.
    states = {j.id: j.status for j in shown}
    before = st.session_state.get("train_job_states", {})
    st.session_state["train_job_states"] = states
    if any(before.get(job_id, status) != status for job_id, status in states.items()):
        st.rerun(scope="app")


def _weights_caption() -> str:
    have = [name for name in PRETRAINED if imagenet_weights_status(name)[0]]
    if have:
        return f"ImageNet weights on this machine: {', '.join(have)}. Others would be downloaded (internet needed)."
    return (
        "No ImageNet weights on this machine: **imagenet** would download them (internet needed). "
        "Offline, train **compact_cnn** from scratch (weights none), or copy the no-top weight files into "
        "~/.keras/models/."
    )


with new_tab:
    default_folder = run.meta.get("dataset", "") if run else ""
    if not default_folder and (workspace() / "datasets" / "demo_shapes").is_dir():
        default_folder = str(workspace() / "datasets" / "demo_shapes")
    folder = folder_input("Image folder", "train_folder", default_folder)
    request_id = st.session_state.setdefault(REQUEST_KEY, jobs.new_request_id())
    started_here = st.session_state.setdefault(STARTED_KEY, [])
    starting = []
    for job_id in started_here:
        try:
            if jobs.read_job(workspace(), job_id).status == jobs.STARTING:
                starting.append(job_id)
        except jobs.JobError:
            continue
    with st.form("new_run"):
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox(
            "Architecture",
            ARCHITECTURE_NAMES,
            index=ARCHITECTURE_NAMES.index("compact_cnn"),
            key="train_arch",
            help="compact_cnn trains in about a minute on a CPU and needs no download.",
        )
        weights = c2.radio(
            "Weights",
            ["none", "imagenet"],
            horizontal=True,
            key="train_weights",
            help="none: from scratch; imagenet: pre-trained, frozen first then fine-tuned (needs the weights file)",
        )
        image_size = c3.number_input(
            "Image size (px)",
            16,
            1024,
            64,
            key="train_img_size",
            help="64 suits compact_cnn; pre-trained networks expect about 224.",
        )
        epochs = c1.number_input("Epochs", 1, 500, 10, key="train_epochs")
        fine_tune = c2.number_input(
            "Fine-tuning epochs",
            0,
            500,
            0,
            key="train_fine_tune",
            help="A second phase with the top of the backbone unfrozen at a 10x lower learning rate",
        )
        batch_size = c3.number_input(
            "Batch size (per device)",
            1,
            1024,
            32,
            key="train_batch",
            help="Images per batch on each device (replica); the global batch is this x devices, recorded with the run",
        )
        learning_rate = c1.number_input("Learning rate", 1e-6, 0.5, 1e-3, format="%.5f", key="train_lr")
        class_weights = c2.selectbox(
            "Class weights",
            ["when imbalanced", "always", "never"],
            key="train_class_weights",
            help="when imbalanced: only if the largest class has over 1.5x the images of the smallest",
        )
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
        augment = c1.checkbox("Augment (flip, crop, zoom)", key="train_augment")
        group_split = c2.checkbox("One split per sub-folder (patient)", key="train_group_split")
        name = c3.text_input("Run name", key="train_name", max_chars=60)
        with st.expander("Advanced: devices, precision, input pipeline"):
            a1, a2 = st.columns(2)
            strategy = a1.selectbox(
                "Strategy",
                STRATEGIES,
                key="train_strategy",
                help="auto: mirrored over every GPU when there are several, else one device · one: a single "
                "device · mirrored: MirroredStrategy over every GPU · multiworker: this machine is one worker of "
                "a cluster described by TF_CONFIG (start the other workers with the same command, see README)",
            )
            lr_rule = a2.selectbox(
                "Learning rate rule",
                LR_RULES,
                key="train_lr_rule",
                help="none: the learning rate is used as given, for the global batch · linear: times the number "
                "of devices",
            )
            mixed_precision = a1.checkbox(
                "Mixed precision",
                key="train_mixed_precision",
                help="float16 on a GPU, bfloat16 on a CPU that has it (else float32, with a warning); the output "
                "layer, the saved model and the explanations stay float32",
            )
            cache = a2.checkbox(
                "Cache decoded images on disk",
                key="train_cache",
                help="Decoded, resized images are kept under the workspace (cache/pipeline): epochs after the "
                "first skip decoding",
            )
        download = st.checkbox(
            "Download missing ImageNet weights when training starts (needs internet)", key="train_download"
        )
        track_col, uri_col = st.columns([1, 2])
        track = track_col.checkbox(
            "Track with MLflow",
            key="train_mlflow",
            help="Log the hyper-parameters, each epoch's metrics, the test metrics, confusion matrix, ROC curves, "
            "run.json and the model to MLflow",
        )
        mlflow_uri = uri_col.text_input(
            "MLflow tracking URI",
            key="train_mlflow_uri",
            placeholder="empty: the workspace's own store, mlflow/mlflow.db",
            help="sqlite:///PATH.db, file:///FOLDER or http://HOST:PORT (a running MLflow server)",
        )
        st.caption(_weights_caption())
        if starting:
            st.caption(f"Starting job {starting[0][:8]}… The button comes back once it runs.")
        submitted = st.form_submit_button(
            "Start training", type="primary", key=f"start_{request_id}", disabled=bool(starting)
        )
    if submitted:
        from core.training import TrainingConfig  # imports TensorFlow: only when a run is started

        try:
            if folder is None:
                raise ValueError("Choose an image folder first.")
            config = TrainingConfig(
                arch=arch,
                image_size=int(image_size),
                epochs=int(epochs),
                batch_size=int(batch_size),
                learning_rate=float(learning_rate),
                seed=int(seed),
                weights=None if weights == "none" else weights,
                augment=augment,
                class_weights={"always": "always", "never": "none"}.get(class_weights),
                fine_tune_epochs=int(fine_tune),
                group_split=group_split,
                strategy=strategy,
                mixed_precision=mixed_precision,
                lr_rule=lr_rule,
                cache=cache,
            )
            config.validate()
            if strategy == "multiworker":
                from core.multiworker import read_cluster

                read_cluster()  # a missing or malformed TF_CONFIG, said here instead of in the job's log
            if config.weights == "imagenet":
                available, message = imagenet_weights_status(arch, int(image_size))
                if not available and not download:
                    raise ValueError(message + " Tick the download box to fetch them.")
            index = dataset_index(str(folder), int(seed), group_split, config.val_fraction, config.test_fraction)
            problems = split_problems(index)
            if problems:
                raise DatasetError(" ".join(problems))
        except (ValueError, DatasetError) as exc:
            st.error(str(exc))
        else:
            try:
                tracking_args = (
                    [f"--mlflow={mlflow_uri.strip()}" if mlflow_uri.strip() else "--mlflow"] if track else []
                )
                job = jobs.start_training(
                    workspace(), folder, config, name.strip() or None, request_id=request_id, extra_args=tracking_args
                )
            except (ValueError, OSError) as exc:
                st.error(str(exc))
            else:
                if job.id not in started_here:
                    started_here.append(job.id)
                    st.session_state[FLASH_KEY] = (
                        job.id,
                        f"Training job {job.id[:8]} started on {len(index.records)} images of "
                        f"{len(index.class_names)} classes. Follow it below.",
                        split_warnings(index),
                    )
                st.session_state[REQUEST_KEY] = jobs.new_request_id()  # the next submission is a new request
                st.rerun()  # the form again, with the new request's button (disabled while the job starts)

    st.subheader("Training jobs")
    flash = st.session_state.get(FLASH_KEY)
    if flash:  # what the last start said (and the split's warnings), while that job runs
        try:
            active = jobs.read_job(workspace(), flash[0]).is_active
        except jobs.JobError:
            active = False
        if active:
            st.success(flash[1])
            for message in flash[2]:
                st.warning(message)
    live_jobs()
    recent = [r for r in runs.list_runs(workspace()) if r.status in (runs.FAILED, runs.CANCELLED)][:5]
    if recent:
        with st.expander(count(len(recent), "recent failed or cancelled run")):
            for failed in recent:
                st.markdown(f"**{failed.id}** · {failed.status}: {failed.meta.get('error', 'no reason recorded')}")

# ---- compare runs: like with like -----------------------------------------------------------------
with compare_tab:
    complete = [r for r in runs.list_runs(workspace()) if r.is_complete]
    if len(complete) < 1:
        st.info("No complete run to compare yet.")
    else:
        by_id = {r.id: r for r in complete}
        names = runs.short_names(complete)
        chosen = st.multiselect(
            "Runs", list(by_id), default=list(by_id)[:3], key="compare_runs", format_func=lambda i: names[i]
        )
        selected = [by_id[i] for i in chosen]
        groups = runs.class_groups(selected)
        if len(groups) > 1:
            st.info(
                f"These runs were trained on {len(groups)} different sets of classes: each set is compared "
                "class by class in its own table."
            )
        for i, (classes, members) in enumerate(groups):
            if len(groups) > 1:
                st.markdown(f"**Classes:** {', '.join(classes)}")
            table = runs.comparison_table(members)
            if "epochs" in table:  # whole epochs; an imported run has none (a dash, not "None")
                table["epochs"] = table["epochs"].map(lambda v: "—" if pd.isna(v) else f"{int(v)}")
            st.dataframe(table.style.format(precision=3, na_rep=""), key=f"compare_table_{i}")
        if selected:
            combined = runs.combined_history(selected, short=True)
            if not combined.empty:
                left, right = st.columns(2)
                left.plotly_chart(charts.compare_curves(combined, "val_accuracy"), key="compare_val_accuracy")
                right.plotly_chart(charts.compare_curves(combined, "val_loss"), key="compare_val_loss")
