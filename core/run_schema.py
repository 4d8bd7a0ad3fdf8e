"""What a run.json may hold, checked on every read (`core.runs.read_run`): field types, known statuses,
class names, input size. One hand-edited or damaged run.json is then reported as unreadable, with the
reason, and never breaks the listing of the other runs."""

from __future__ import annotations

RUNNING, COMPLETE, FAILED, CANCELLED = "running", "complete", "failed", "cancelled"
STATUSES = (RUNNING, COMPLETE, FAILED, CANCELLED)

# What run.json may hold: field -> (accepted types, required). Checked on every read, so one hand-edited
# or damaged run.json is reported as unreadable and never breaks the listing of the other runs.
_TEXT, _NUMBER = (str,), (int, float)
RUN_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "status": (_TEXT, True),
    "created_at": (_TEXT, True),
    "finished_at": (_TEXT, False),
    "name": (_TEXT, False),
    "source": (_TEXT, False),
    "architecture": (_TEXT, False),
    "dataset": (_TEXT, False),
    "preprocessing": (_TEXT + (type(None),), False),
    "error": (_TEXT + (type(None),), False),
    "traceback": (_TEXT, False),
    "class_names": ((list,), False),
    "input_size": ((list,), False),
    "pid": ((int,), False),
    "seed": ((int,), False),
    "epochs_trained": ((int, type(None)), False),
    "best_epoch": ((int, type(None)), False),
    "test_accuracy": (_NUMBER + (type(None),), False),
    "roc_auc_macro": (_NUMBER + (type(None),), False),
    "durations": ((dict, type(None)), False),
    "hyperparameters": ((dict,), False),
    "split_counts": ((dict,), False),
    "warnings": ((list,), False),
}


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "text", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return " or ".join("null" if t is type(None) else names.get(t, t.__name__) for t in types)


def schema_problems(meta: dict) -> list[str]:
    """What is wrong with a run.json's contents (empty when it is fine)."""
    problems = []
    for key, (types, required) in RUN_SCHEMA.items():
        if key not in meta:
            if required:
                problems.append(f"{key} is missing")
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{key} must be {_type_names(types)}, not {type(value).__name__} {value!r:.60}")
    if isinstance(meta.get("status"), str) and meta["status"] not in STATUSES:
        problems.append(f"status must be one of {list(STATUSES)}, not {meta['status']!r:.40}")
    names = meta.get("class_names")
    if isinstance(names, list):
        if not all(isinstance(n, str) and n for n in names):
            problems.append("class_names must be a list of non-empty texts")
        elif len(set(names)) != len(names):
            problems.append("class_names repeats a name")
        elif meta.get("status") == COMPLETE and len(names) < 2:
            problems.append(f"class_names must name at least 2 classes, not {len(names)}")
    elif meta.get("status") == COMPLETE:
        problems.append("class_names is missing (a complete run needs the model's class names)")
    size = meta.get("input_size")
    if isinstance(size, list) and not (
        len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        problems.append(f"input_size must be [height, width] in pixels, not {size!r:.40}")
    if isinstance(meta.get("durations"), dict) and not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta["durations"].values()
    ):
        problems.append("durations must map names to seconds")
    return problems
