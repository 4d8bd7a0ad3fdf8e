"""Feedback: the flags users raised (Explainer's "Flag this", the API's POST /feedback), to review and export."""

import streamlit as st

from core import feedback
from core.text import count
from ui.common import setup_page, workspace
from ui.serving import flags_table

setup_page("Feedback", ":material/flag:")
ws = workspace()
CONFIRM = "feedback_confirm_delete"

try:
    everything = feedback.list_flags(ws)
except (feedback.FeedbackError, OSError) as exc:
    st.error(f"The feedback database {feedback.db_path(ws)} cannot be read: {exc}")
    st.stop()

if not everything:
    st.info(
        'No flags yet. Flag a prediction or an explanation on the **Explainer** page ("Flag this"), or send one '
        "to the API: `curl -F file=@image.png -F flag_type=wrong_prediction -F correct_class=square "
        "http://127.0.0.1:8000/feedback`."
    )
    st.caption(f"Flags are kept in `{feedback.db_path(ws)}`.")
    st.stop()

# ---- filters ---------------------------------------------------------------------------------------
ALL = "(all)"
cols = st.columns(4)
run_filter = cols[0].selectbox("Run", [ALL, *sorted({f["run_id"] for f in everything})], key="fb_run")
type_filter = cols[1].selectbox(
    "Flag type", [ALL, *feedback.FLAG_TYPES], format_func=lambda t: feedback.FLAG_TYPES.get(t, t), key="fb_type"
)
predicted_filter = cols[2].selectbox(
    "Predicted class", [ALL, *sorted({f["predicted_class"] or "" for f in everything} - {""})], key="fb_pred"
)
correct_filter = cols[3].selectbox(
    "Correct class", [ALL, *sorted({f["correct_class"] or "" for f in everything} - {""})], key="fb_correct"
)
flags = feedback.list_flags(
    ws,
    run_id=None if run_filter == ALL else run_filter,
    flag_type=None if type_filter == ALL else type_filter,
    predicted_class=None if predicted_filter == ALL else predicted_filter,
    correct_class=None if correct_filter == ALL else correct_filter,
)

# ---- counts ----------------------------------------------------------------------------------------
tally = feedback.counts(ws, None if run_filter == ALL else run_filter)
metric_cols = st.columns(len(feedback.FLAG_TYPES) + 1)
metric_cols[0].metric("Flags shown", f"{len(flags)} / {len(everything)}")
for col, (flag_type, label) in zip(metric_cols[1:], feedback.FLAG_TYPES.items(), strict=True):
    col.metric(label, tally["by_type"].get(flag_type, 0))
by_class = st.columns(2)
by_class[0].caption("Flags per predicted class")
by_class[0].bar_chart(tally["by_class"], horizontal=True, height=160)
by_class[1].caption("Flags per correct class (given by the user)")
by_class[1].bar_chart(tally["by_correct_class"], horizontal=True, height=160)

# ---- the table ---------------------------------------------------------------------------------------
st.subheader("Flags")
if not flags:
    st.info("No flag matches these filters.")
else:
    st.dataframe(
        flags_table(flags),
        hide_index=True,
        key="fb_table",
        column_config={
            "image": st.column_config.ImageColumn("image", width="small"),
            "confidence": st.column_config.NumberColumn(format="%.3f"),
        },
    )

# ---- export ----------------------------------------------------------------------------------------
st.subheader("Export")
left, right = st.columns(2)
left.download_button(
    "Download the shown flags as CSV",
    feedback.export_csv(flags),
    file_name="feedback.csv",
    mime="text/csv",
    key="fb_csv",
    icon=":material/download:",
    disabled=not flags,
)
target = feedback.default_export_dir(ws)
right.caption(
    f"Copies each shown flag's image into `{ws / 'datasets'}/feedback-<time>/<correct class>/`, ready for "
    "`python -m core train --data` (flags without a correct class are skipped)."
)
if right.button("Export as image folder", key="fb_export", icon=":material/folder:", disabled=not flags):
    result = feedback.export_image_folder(ws, target, flags)
    if result["per_class"]:
        right.success(
            f"Exported {count(sum(result['per_class'].values()), 'image')} to `{result['folder']}`: "
            + ", ".join(f"{k}: {v}" for k, v in result["per_class"].items())
            + f". Skipped {count(result['skipped'], 'flag')} without a correct class."
        )
        right.code(f"python -m core train --data {result['folder']} --arch compact_cnn --weights none", "bash")
    else:
        right.warning(f"Nothing to export: none of the {len(flags)} shown flags names a correct class.")

# ---- delete ----------------------------------------------------------------------------------------
st.subheader("Delete a flag")
ids = [f["id"] for f in flags]
if ids:
    chosen = st.selectbox("Flag", ids, format_func=lambda i: f"#{i}", key="fb_delete_id")
    if st.button("Delete…", key="fb_delete", icon=":material/delete:"):
        st.session_state[CONFIRM] = chosen
    if st.session_state.get(CONFIRM) is not None:
        pending = st.session_state[CONFIRM]
        st.warning(f"Delete flag #{pending}? Its image goes too if no other flag uses it. This cannot be undone.")
        yes, no = st.columns(2)
        if yes.button("Yes, delete it", key="fb_delete_yes", type="primary"):
            st.session_state[CONFIRM] = None
            st.toast(f"Deleted flag #{pending}." if feedback.delete_flag(ws, pending) else f"No flag #{pending}.")
            st.rerun()
        if no.button("Cancel", key="fb_delete_no"):
            st.session_state[CONFIRM] = None
            st.rerun()
st.caption(f"Database: `{feedback.db_path(ws)}` · images: `{feedback.images_dir(ws)}`")
