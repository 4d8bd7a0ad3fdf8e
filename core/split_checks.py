"""Can a dataset's splits be trained on and evaluated? Checked before any run is created.

`split_problems` lists what makes evaluation impossible (refused); `split_warnings` what makes it
misleading (a class with one image, a class the model never sees in training or is never tested on).
Both take a scanned `DatasetIndex`; this module does not import TensorFlow.
"""

from __future__ import annotations

from core.data import DatasetError, DatasetIndex


def _classes_in(index: DatasetIndex, split: str) -> set[str]:
    return set(index.split(split)["class_name"])


def split_problems(index: DatasetIndex) -> list[str]:
    """Reasons the splits cannot give a trained and evaluated model (empty when they can)."""
    problems = []
    counts = index.counts().sum(axis=1).to_dict()
    for split in ("train", "test"):
        if index.split(split).empty:
            problems.append(
                f"The {split} split of {index.root} would be empty ({len(index.records)} images, counts per class "
                f"{counts}). Add images or change the split fractions."
            )
    if problems:
        return problems
    for split in ("train", "test"):
        present = sorted(_classes_in(index, split))
        if len(present) < 2:
            problems.append(
                f"The {split} split holds a single class ({', '.join(present)}): a classifier cannot be "
                f"{'trained' if split == 'train' else 'evaluated'} on it. Every split needs at least 2 classes."
            )
    return problems


def split_warnings(index: DatasetIndex) -> list[str]:
    """What will make the test metrics misleading, one sentence per problem (empty when nothing does)."""
    warnings = []
    table = index.counts()
    totals = table.sum(axis=1)
    single = [c for c in index.class_names if totals[c] == 1]
    if single:
        warnings.append(
            f"{len(single)} class(es) have a single image ({', '.join(single)}): they cannot be both trained on "
            "and tested; their test metrics mean nothing."
        )
    train, test = _classes_in(index, "train"), _classes_in(index, "test")
    never_trained = [c for c in index.class_names if c not in train]
    if never_trained:
        warnings.append(
            f"Class(es) {', '.join(never_trained)} have no training image: the model cannot learn them "
            "(their test accuracy will be 0)."
        )
    never_tested = [c for c in index.class_names if c not in test and c not in single]
    if never_tested:
        warnings.append(
            f"Class(es) {', '.join(never_tested)} have no test image: their precision, recall and ROC AUC "
            "cannot be measured."
        )
    return warnings


def check_splits(index: DatasetIndex) -> list[str]:
    """Refuses splits that cannot be evaluated; returns the warnings for the others.

    Raises:
        DatasetError: the train or test split is empty or holds a single class.
    """
    problems = split_problems(index)
    if problems:
        raise DatasetError(" ".join(problems))
    return split_warnings(index)
