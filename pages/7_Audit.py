"""Audit: what the model looks at, per class, over the test set (shortcut flags tested counterfactually),
and Trust: per method, the evidence for its maps (deletion/insertion, randomisation, localisation)."""

import pandas as pd
import streamlit as st

from ui import audit as ui
from ui.common import require_run, setup_page

setup_page("Audit", ":material/policy:")
run = require_run()
st.caption(
    "A heatmap is a claim about the model. This page checks it over the test set: where each class's maps "
    "concentrate (a border or corner far beyond the other classes suggests a shortcut, tested by hiding it), "
    "and, per method, whether its maps are faithful to the model, depend on its weights and on the class, "
    "and land on the object."
)

from core.explain import METHODS, describe  # TensorFlow: after the cheap checks
from core.models import ModelError
from ui.common import model

try:
    net = model(run)
except ModelError as exc:
    st.error(f"The model of this run cannot be loaded: {exc}")
    st.stop()
titles = {m: describe(m)["title"] for m in METHODS}

audit_tab, trust_tab = st.tabs(["Dataset audit", "Trust"])

# ---- the dataset audit -------------------------------------------------------------------------------
with audit_tab:
    left, middle, right = st.columns([2, 1, 1])
    method = left.selectbox(
        "Method",
        list(METHODS),
        index=list(METHODS).index("gradcam") if "gradcam" in METHODS else 0,
        format_func=titles.get,
        key="audit_method",
    )
    limit = middle.number_input(
        "Test images (0: all)",
        min_value=0,
        value=0,
        step=10,
        key="audit_limit",
        help="Audit only this many test images, classes in turn.",
    )
    agreement_images = right.number_input(
        "Images for method agreement",
        min_value=0,
        max_value=64,
        value=8,
        key="audit_agreement",
        help="Every method explains these images; 0 skips the agreement matrix.",
    )
    if st.button("Run the audit", type="primary", key="audit_run"):
        try:
            ui.run_audit(run, net, method, int(limit) or None, int(agreement_images))
        except (ValueError, OSError) as exc:
            st.error(f"The audit could not run: {exc}")
    report = ui.saved_audit(run)
    if report is None:
        st.info("No audit of this run yet: choose a method and press **Run the audit**.")
    else:
        st.markdown(
            f"**{titles.get(report['method'], report['method'])}** on **{report['images']}** test images, "
            f"each explained for its true class (saved {report.get('created_at', '')[:19].replace('T', ' ')})."
        )
        if report["flagged"]:
            st.error("Flagged: " + ", ".join(report["flagged"]))
        else:
            st.success("No class is flagged: no class's maps concentrate on a border or corner beyond the others.")
        for entry in report["classes"].values():
            (st.warning if entry["flagged"] else st.markdown)(entry["text"])

        st.subheader("Mean map per class")
        names = list(report["mean_maps"])
        columns = st.columns(min(len(names), 6) or 1)
        for i, name in enumerate(names):
            columns[i % len(columns)].image(
                ui.heat(report["mean_maps"][name]),
                caption=f"{name} ({report['classes'][name]['images']} images)",
                width="stretch",
            )

        st.subheader("Where the map mass lies")
        st.plotly_chart(ui.shares_figure(report), key="audit_shares")

        st.subheader("Counterfactual: the region hidden (grey)")
        rows = [
            {
                "class": name,
                "flagged": entry["flagged"],
                "region hidden": ui.REGION_LABELS[entry["hidden_region"]],
                "share there": entry["share"],
                "other classes' share": entry["others_share"],
                "uniform share": entry["uniform_share"],
                "accuracy before": entry["accuracy_before"],
                "accuracy after": entry["accuracy_after"],
                "mean probability before": entry["probability_before"],
                "mean probability after": entry["probability_after"],
                "others' accuracy before": entry["others_accuracy_before"],
                "others' accuracy after": entry["others_accuracy_after"],
            }
            for name, entry in report["classes"].items()
        ]
        st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, key="audit_counterfactual")

        agreement = report.get("agreement")
        if agreement and agreement.get("methods"):
            st.subheader("Method agreement")
            st.caption(
                f"Mean Spearman rank correlation between the maps of every pair of methods over "
                f"{agreement['images']} test images (each method at its fast setting)."
            )
            st.plotly_chart(ui.agreement_figure(agreement), key="audit_agreement_matrix")
            for name, error in agreement.get("errors", {}).items():
                st.caption(f"{name}: {error}")

# ---- trust ---------------------------------------------------------------------------------------------
with trust_tab:
    chosen = st.multiselect(
        "Methods",
        list(METHODS),
        default=[m for m in ("gradcam", "vanilla_gradients") if m in METHODS],
        format_func=titles.get,
        key="trust_methods",
    )
    left, middle, right = st.columns(3)
    trust_limit = left.number_input("Test images", min_value=1, max_value=1000, value=16, key="trust_limit")
    sanity_images = middle.number_input(
        "Images for the sanity checks",
        min_value=0,
        max_value=16,
        value=2,
        key="trust_sanity",
        help="The randomisation cascade and the class check recompute every map several times: keep it small.",
    )
    fast = right.checkbox("Fast settings", value=True, key="trust_fast", help="Each method's cheap, rough setting.")
    if st.button("Score the methods", type="primary", key="trust_run", disabled=not chosen):
        try:
            ui.run_trust(run, net, chosen, int(trust_limit), int(sanity_images), fast)
        except (ValueError, OSError) as exc:
            st.error(f"The methods could not be scored: {exc}")
    trust = ui.saved_trust(run)
    if trust is None:
        st.info("No trust scores for this run yet: choose methods and press **Score the methods**.")
    else:
        from core.trust_report import table_rows

        reference = trust["random_reference"]
        st.markdown(
            f"Over **{trust['images']}** test images (explained class: predicted; {trust['masks']} with a "
            f"ground-truth mask). Deletion AUC: lower is better; insertion AUC: higher is better. A random map "
            f"scores deletion {reference['deletion_auc']:.3f}, insertion {reference['insertion_auc']:.3f}."
        )
        st.dataframe(pd.DataFrame(table_rows(trust)).round(3), hide_index=True, key="trust_table")
        if trust.get("ranking"):
            st.caption(
                "Ranked by insertion - deletion: "
                + ", ".join(
                    f"{titles.get(r['method'], r['method'])} ({r['insertion_minus_deletion']:.2f})"
                    for r in trust["ranking"]
                )
            )
        for name, entry in trust["methods"].items():
            st.markdown(f"#### {titles.get(name, name)}")
            if "error" in entry:
                st.error(entry["error"])
                continue
            plot, words = st.columns([1, 1])
            plot.plotly_chart(ui.curves_figure(entry, reference, reference["fractions"]), key=f"trust_curves_{name}")
            randomisation = entry.get("randomisation")
            if entry.get("sanity_error"):
                words.warning(f"The sanity checks could not run: {entry['sanity_error']}")
            if randomisation:
                (words.success if randomisation["passed"] else words.error)(randomisation["verdict"])
                words.markdown(entry["class_sensitivity"]["verdict"])
            local = entry.get("localisation")
            if local:
                words.markdown(
                    f"On {local['images']} masked images: pointing game {local['pointing_game']:.2f}, "
                    f"energy inside the mask {local['energy_pointing_game']:.2f}, "
                    f"top-k IoU {local['top_k_iou']:.2f}."
                )
            strip = trust.get("strips", {}).get(name)
            if randomisation and strip is not None:
                stages = randomisation["stages"]
                cells = st.columns(len(stages))
                for cell, stage, saliency in zip(cells, stages, strip):
                    label = "original" if stage["stage"] == 0 else f"→ {stage['top_layer']}"
                    cell.image(
                        ui.heat(saliency),
                        caption=f"{label} · ρ {stage['mean_spearman']:.2f}",
                        width="stretch",
                    )
