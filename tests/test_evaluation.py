"""core.evaluation: the predictions table, metrics with known answers, report, confusion matrix, curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from core import evaluation

CLASSES = ["cat", "dog", "fox"]
Y_TRUE = [0, 0, 1, 1, 2, 2]
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # cat -> cat
        [0.3, 0.6, 0.1],  # cat -> dog
        [0.2, 0.5, 0.3],  # dog -> dog
        [0.1, 0.8, 0.1],  # dog -> dog
        [0.1, 0.3, 0.6],  # fox -> fox
        [0.5, 0.1, 0.4],  # fox -> cat
    ]
)


@pytest.fixture
def frame() -> pd.DataFrame:
    return evaluation.predictions_frame([f"img{i}.png" for i in range(6)], Y_TRUE, PROBS, CLASSES)


def test_predictions_frame_columns_and_values(frame):
    assert list(frame.columns) == [
        "path", "true_label", "true_class", "pred_label", "pred_class", "confidence", "correct",
        "prob_cat", "prob_dog", "prob_fox",
    ]  # fmt: skip
    assert frame["pred_label"].tolist() == [0, 1, 1, 1, 2, 0]
    assert frame["pred_class"].tolist() == ["cat", "dog", "dog", "dog", "fox", "cat"]
    assert frame["true_class"].tolist() == ["cat", "cat", "dog", "dog", "fox", "fox"]
    assert frame["correct"].tolist() == [True, False, True, True, True, False]
    np.testing.assert_allclose(frame["confidence"], [0.7, 0.6, 0.5, 0.8, 0.6, 0.5])
    np.testing.assert_allclose(frame["prob_dog"], PROBS[:, 1])
    assert evaluation.class_names_of(frame) == CLASSES


def test_predictions_frame_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"Expected probabilities of shape \(6, 3\). Received \(6, 2\)"):
        evaluation.predictions_frame(["p"] * 6, Y_TRUE, PROBS[:, :2], CLASSES)
    with pytest.raises(ValueError, match=r"Expected probabilities of shape \(5, 3\)"):
        evaluation.predictions_frame(["p"] * 5, Y_TRUE[:5], PROBS, CLASSES)


def test_compute_metrics_known_answers(frame):
    metrics = evaluation.compute_metrics(frame)
    assert metrics["class_names"] == CLASSES
    assert metrics["n_samples"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    expected = {
        "cat": dict(precision=1 / 2, recall=1 / 2, f1=1 / 2, support=2, roc_auc=7 / 8),
        "dog": dict(precision=2 / 3, recall=1.0, f1=0.8, support=2, roc_auc=7 / 8),
        "fox": dict(precision=1.0, recall=1 / 2, f1=2 / 3, support=2, roc_auc=1.0),
    }
    for name, values in expected.items():
        for key, value in values.items():
            assert metrics["per_class"][name][key] == pytest.approx(value), (name, key)
    assert metrics["roc_auc_macro"] == pytest.approx((7 / 8 + 7 / 8 + 1.0) / 3)
    assert metrics["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(Y_TRUE, PROBS, multi_class="ovr"))
    assert metrics["macro_avg"]["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["macro_avg"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["weighted_avg"]["recall"] == pytest.approx(4 / 6)
    assert metrics["macro_avg"]["support"] == metrics["weighted_avg"]["support"] == 6
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_compute_metrics_survives_a_csv_round_trip(frame, tmp_path):
    frame.to_csv(tmp_path / "p.csv", index=False)
    assert evaluation.compute_metrics(pd.read_csv(tmp_path / "p.csv")) == evaluation.compute_metrics(frame)


def test_binary_metrics_and_a_single_roc_curve():
    probs_pos = np.array([0.1, 0.6, 0.4, 0.9])
    frame = evaluation.predictions_frame(
        list("abcd"), [0, 0, 1, 1], np.stack([1 - probs_pos, probs_pos], 1), ["neg", "pos"]
    )
    metrics = evaluation.compute_metrics(frame)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["per_class"]["pos"]["roc_auc"] == pytest.approx(0.75)
    assert metrics["per_class"]["neg"]["roc_auc"] == pytest.approx(0.75)
    assert metrics["roc_auc_macro"] == pytest.approx(skm.roc_auc_score([0, 0, 1, 1], probs_pos))
    curves = evaluation.roc_curves(frame)
    assert list(curves) == ["pos"]
    fpr, tpr, _ = skm.roc_curve([0, 0, 1, 1], probs_pos)
    np.testing.assert_allclose(curves["pos"]["fpr"], fpr)
    np.testing.assert_allclose(curves["pos"]["tpr"], tpr)
    assert curves["pos"]["auc"] == pytest.approx(0.75)
    pr = evaluation.pr_curves(frame)
    assert list(pr) == ["pos"]
    assert pr["pos"]["average_precision"] == pytest.approx(skm.average_precision_score([0, 0, 1, 1], probs_pos))


def test_class_missing_from_the_test_set():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1]])
    frame = evaluation.predictions_frame(list("abcd"), [0, 0, 1, 1], probs, CLASSES)
    metrics = evaluation.compute_metrics(frame)
    assert metrics["per_class"]["fox"]["roc_auc"] is None
    assert metrics["per_class"]["fox"]["support"] == 0
    assert metrics["per_class"]["fox"]["precision"] == 0.0  # predicted once, never right
    cat_auc = skm.roc_auc_score([1, 1, 0, 0], probs[:, 0])
    dog_auc = skm.roc_auc_score([0, 0, 1, 1], probs[:, 1])
    assert metrics["per_class"]["cat"]["roc_auc"] == pytest.approx(cat_auc)
    assert metrics["roc_auc_macro"] == pytest.approx((cat_auc + dog_auc) / 2)
    assert list(evaluation.roc_curves(frame)) == ["cat", "dog"]
    assert list(evaluation.pr_curves(frame)) == ["cat", "dog"]
    assert metrics["confusion_matrix"][2] == [0, 0, 0]


def test_a_single_class_present_has_no_auc():
    frame = evaluation.predictions_frame(list("ab"), [1, 1], np.array([[0.3, 0.7], [0.6, 0.4]]), ["neg", "pos"])
    metrics = evaluation.compute_metrics(frame)
    assert metrics["roc_auc_macro"] is None
    assert metrics["accuracy"] == 0.5
    assert evaluation.roc_curves(frame) == {}


def test_classification_report_frame_matches_sklearn(frame):
    report = evaluation.classification_report_frame(evaluation.compute_metrics(frame))
    assert list(report.index) == ["cat", "dog", "fox", "accuracy", "macro avg", "weighted avg"]
    assert list(report.columns) == ["precision", "recall", "f1", "support"]
    reference = skm.classification_report(Y_TRUE, PROBS.argmax(1), target_names=CLASSES, output_dict=True)
    for row in ("cat", "dog", "fox", "macro avg", "weighted avg"):
        assert report.loc[row, "precision"] == pytest.approx(reference[row]["precision"])
        assert report.loc[row, "recall"] == pytest.approx(reference[row]["recall"])
        assert report.loc[row, "f1"] == pytest.approx(reference[row]["f1-score"])
        assert report.loc[row, "support"] == reference[row]["support"]
    assert report.loc["accuracy", "f1"] == pytest.approx(reference["accuracy"])
    assert report.loc["accuracy", "support"] == 6
    assert pd.isna(report.loc["accuracy", "precision"]) and pd.isna(report.loc["accuracy", "recall"])


def test_confusion_matrix_counts_and_normalised_rows():
    probs = np.array([[0.9, 0.05, 0.05]] * 3 + [[0.1, 0.8, 0.1]] + [[0.1, 0.1, 0.8]] * 2)
    frame = evaluation.predictions_frame(list("abcdef"), [0, 0, 1, 1, 1, 1], probs, CLASSES)
    counts = evaluation.confusion_matrix(frame)
    assert counts.index.name == "true" and counts.columns.name == "predicted"
    assert list(counts.index) == list(counts.columns) == CLASSES
    assert counts.to_numpy().tolist() == [[2, 0, 0], [1, 1, 2], [0, 0, 0]]
    normal = evaluation.confusion_matrix(frame, normalize=True).to_numpy()
    np.testing.assert_allclose(normal[0], [1, 0, 0])
    np.testing.assert_allclose(normal[1], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(normal[:2].sum(axis=1), [1.0, 1.0])
    np.testing.assert_array_equal(normal[2], [0, 0, 0])  # no true fox: a zero row, not NaN


def test_roc_and_pr_curves_one_vs_rest(frame):
    curves = evaluation.roc_curves(frame)
    assert list(curves) == CLASSES
    for i, name in enumerate(CLASSES):
        y = (np.array(Y_TRUE) == i).astype(int)
        fpr, tpr, _ = skm.roc_curve(y, PROBS[:, i])
        np.testing.assert_allclose(curves[name]["fpr"], fpr)
        np.testing.assert_allclose(curves[name]["tpr"], tpr)
        assert curves[name]["fpr"][0] == 0 and curves[name]["tpr"][-1] == 1
    assert curves["fox"]["auc"] == pytest.approx(1.0)
    assert curves["cat"]["auc"] == pytest.approx(7 / 8)
    pr = evaluation.pr_curves(frame)
    assert list(pr) == CLASSES
    for i, name in enumerate(CLASSES):
        y = (np.array(Y_TRUE) == i).astype(int)
        precision, recall, _ = skm.precision_recall_curve(y, PROBS[:, i])
        np.testing.assert_allclose(pr[name]["precision"], precision)
        np.testing.assert_allclose(pr[name]["recall"], recall)
    assert pr["fox"]["average_precision"] == pytest.approx(1.0)
