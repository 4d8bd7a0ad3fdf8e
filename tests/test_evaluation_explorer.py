"""Calibration, thresholds, bootstrap intervals and error analysis: known answers on hand-made predictions."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import top_k_accuracy_score

from core import bootstrap, calibration, error_analysis, thresholds
from core.evaluation import predictions_frame


def _two_class(confidences, correct):
    """Probabilities (N, 2) whose top label has the given confidence, right or wrong as given."""
    confidences = np.asarray(confidences, dtype=float)
    labels = np.zeros(len(confidences), dtype=int)
    probs = np.stack([confidences, 1 - confidences], axis=1)
    labels[~np.asarray(correct)] = 1
    return probs, labels


# ---- calibration --------------------------------------------------------------------------------


def test_ece_equals_the_hand_computed_value():
    probs, labels = _two_class([0.9, 0.9, 0.6, 0.6], [True, False, True, True])
    result = calibration.reliability(probs, labels)
    # bin of 0.9 holds accuracy 0.5 at confidence 0.9; bin of 0.6 holds accuracy 1.0 at confidence 0.6
    assert result["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    counts = [b["count"] for b in result["bins"]]
    assert sum(counts) == 4 and len(counts) == 15
    assert counts[13] == 2 and counts[8] == 2  # (13/15, 14/15] holds 0.9; (8/15, 9/15] holds 0.6


def test_ece_bins_are_closed_on_the_right_and_the_first_at_zero():
    edges = np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0])
    assert calibration.bin_index(edges).tolist() == [0, 0, 1, 14]


def test_perfectly_calibrated_predictions_have_ece_near_zero_and_shifted_ones_do_not():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    calibrated = rng.uniform(size=confidence.shape) < confidence
    shifted = rng.uniform(size=confidence.shape) < confidence - 0.2
    assert calibration.expected_calibration_error(*_two_class(confidence, calibrated)) < 0.02
    assert calibration.expected_calibration_error(*_two_class(confidence, shifted)) == pytest.approx(0.2, abs=0.02)


def test_brier_score_by_hand():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 0])
    expected = (0.0 + (0.25 + 0.25) + (0.64 + 0.04 + 0.36)) / 3
    assert calibration.brier_score(probs, labels) == pytest.approx(expected)


def test_temperature_scaling_lowers_the_validation_log_loss_of_an_over_confident_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3000, 4)) * 1.5
    true_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in true_probs])
    over_confident = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    fit = calibration.fit_temperature(over_confident, labels)
    assert fit["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fit["log_loss_after"] < fit["log_loss_before"] - 0.1
    assert fit["ece_after"] < fit["ece_before"]
    scaled = calibration.apply_temperature(over_confident, fit["temperature"])
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(scaled.argmax(axis=1), over_confident.argmax(axis=1))  # ranking kept


def test_temperature_stays_one_when_nothing_improves():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert calibration.fit_temperature(probs, np.array([0, 1, 2, 0]))["temperature"] == 1.0


@pytest.mark.parametrize(
    "probs, labels, message",
    [
        (np.ones((3, 1)), [0, 0, 0], "shape (N, C)"),
        (np.full((2, 2), 0.5), [0], "labels"),
        (np.full((2, 2), 0.5), [0, 2], "labels in [0, 1]"),
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), [0, 1], "probabilities in [0, 1]"),
    ],
)
def test_calibration_refuses_bad_inputs(probs, labels, message):
    with pytest.raises(calibration.CalibrationError, match=re.escape(message)):
        calibration.reliability(probs, np.asarray(labels))


def test_apply_temperature_refuses_a_non_positive_temperature():
    with pytest.raises(calibration.CalibrationError, match="temperature > 0"):
        calibration.apply_temperature(np.full((1, 2), 0.5), 0.0)


# ---- thresholds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.71, 1.0])
def test_operating_point_counts_equal_scikit_learn(threshold):
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=200).round(2)
    positive = rng.uniform(size=200) < scores
    point = thresholds.operating_point(scores, positive, threshold)
    tn, fp, fn, tp = sk_confusion_matrix(positive, scores >= threshold, labels=[False, True]).ravel()
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (tp, fp, tn, fn)
    if tp + fn:
        assert point["sensitivity"] == pytest.approx(tp / (tp + fn))
    if tn + fp:
        assert point["specificity"] == pytest.approx(tn / (tn + fp))


def test_preset_thresholds_on_a_small_known_case():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.8, 0.9])
    positive = np.array([0, 0, 1, 0, 1, 1, 1], dtype=bool)
    # J at 0.35: sensitivity 4/4, specificity 2/3 -> 0.667; at 0.6: 3/4 + 3/3 - 1 = 0.75 (the best)
    assert thresholds.youden_threshold(scores, positive) == 0.6
    assert thresholds.threshold_for_sensitivity(scores, positive, 1.0) == 0.35
    assert thresholds.threshold_for_sensitivity(scores, positive, 0.5) == 0.8
    assert thresholds.threshold_for_specificity(scores, positive, 1.0) == 0.6
    assert thresholds.threshold_for_specificity(scores, positive, 0.6) == 0.35


def test_threshold_inputs_are_checked():
    with pytest.raises(thresholds.ThresholdError, match="between 0 and 1"):
        thresholds.operating_point([0.2], [True], 1.5)
    with pytest.raises(thresholds.ThresholdError, match="both the class and the rest"):
        thresholds.youden_threshold([0.2, 0.3], [True, True])
    with pytest.raises(thresholds.ThresholdError, match="target sensitivity"):
        thresholds.threshold_for_sensitivity([0.2, 0.3], [True, False], 0)


def test_decide_uses_a_saved_threshold_on_one_class():
    probs = np.array([[0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])
    assert thresholds.decide(probs).tolist() == [0, 1, 1]
    assert thresholds.decide(probs, positive_index=1, threshold=0.25).tolist() == [1, 1, 1]
    assert thresholds.decide(probs, positive_index=1, threshold=0.6).tolist() == [0, 0, 1]


# ---- bootstrap ----------------------------------------------------------------------------------


def _noisy_predictions(n, seed=3, n_classes=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 2.0 * np.eye(n_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_bootstrap_intervals_contain_the_point_estimate_and_shrink_as_the_test_set_grows():
    widths = []
    for n in (60, 960):
        labels, probs = _noisy_predictions(n)
        point = bootstrap.point_metrics(labels, probs)
        ci = bootstrap.confidence_intervals(labels, probs, ["a", "b", "c"], resamples=300, seed=0)
        for key in ("accuracy", "macro_f1", "roc_auc_macro"):
            low, high = ci[key]
            assert low <= point[key] <= high, (key, low, point[key], high)
        assert set(ci["recall"]) == {"a", "b", "c"}
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) = 1/4 of the width


def test_bootstrap_point_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels, probs = _noisy_predictions(300)
    point = bootstrap.point_metrics(labels, probs)
    assert point["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert point["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert point["roc_auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))


def test_bootstrap_is_reproducible_from_its_seed():
    labels, probs = _noisy_predictions(100)
    first = bootstrap.confidence_intervals(labels, probs, resamples=50, seed=7)
    assert bootstrap.confidence_intervals(labels, probs, resamples=50, seed=7) == first
    assert bootstrap.confidence_intervals(labels, probs, resamples=50, seed=8) != first


def test_paired_bootstrap_says_better_only_when_the_interval_excludes_zero():
    labels, good = _noisy_predictions(400, seed=4)
    rng = np.random.default_rng(5)
    noisy = np.clip(good + rng.uniform(0, 0.9, good.shape), 0, None)
    bad = noisy / noisy.sum(axis=1, keepdims=True)
    clearly = bootstrap.paired_difference(labels, bad, good, resamples=200)
    assert clearly["accuracy"]["difference"] > 0 and clearly["accuracy"]["b_better"]
    same = bootstrap.paired_difference(labels, good, good, resamples=200)
    assert same["accuracy"]["interval"] == [0.0, 0.0] and not same["accuracy"]["b_better"]


def test_bootstrap_refuses_too_few_resamples():
    labels, probs = _noisy_predictions(10)
    with pytest.raises(bootstrap.BootstrapError, match="resamples"):
        bootstrap.confidence_intervals(labels, probs, resamples=3)


# ---- error analysis -----------------------------------------------------------------------------


def _frame(paths, labels, probs, names=("cat", "dog", "fox")):
    return predictions_frame(paths, labels, np.asarray(probs), list(names))


def test_top_k_accuracy_matches_scikit_learn():
    labels, probs = _noisy_predictions(200, n_classes=5)
    frame = _frame([f"x/{i}.png" for i in range(200)], labels, probs, names=list("abcde"))
    ours = error_analysis.top_k_accuracy(frame)
    assert list(ours) == [1, 2, 3, 4]
    for k, value in ours.items():
        assert value == pytest.approx(top_k_accuracy_score(labels, probs, k=k, labels=range(5)))
    two = _frame(["a.png", "b.png"], [0, 1], [[0.6, 0.4], [0.3, 0.7]], names=("x", "y"))
    assert error_analysis.top_k_accuracy(two) == {}


def test_metrics_per_group_finds_the_patient_the_model_fails_on():
    paths = ["d/cat/p1/a.png", "d/cat/p1/b.png", "d/cat/p2/c.png", "d/cat/p2/d.png", "d/dog/e.png"]
    probs = [[0.9, 0.1, 0], [0.8, 0.2, 0], [0.2, 0.8, 0], [0.4, 0.6, 0], [0.1, 0.9, 0]]
    table = error_analysis.metrics_per_group(_frame(paths, [0, 0, 0, 0, 1], probs))
    assert table.iloc[0][["class", "group", "images", "accuracy"]].tolist() == ["cat", "p2", 2, 0.0]
    assert table.iloc[0]["mean true-class probability"] == pytest.approx(0.3)
    assert set(table["group"]) == {"p1", "p2", "(no sub-folder)"}
    flat = _frame(["d/cat/a.png", "d/dog/b.png"], [0, 1], [[0.9, 0.1, 0], [0.2, 0.8, 0]])
    assert error_analysis.metrics_per_group(flat).empty


def test_ranked_mistakes_put_the_most_confident_error_first():
    paths = [f"{i}.png" for i in range(5)]
    probs = [[0.1, 0.9, 0], [0.3, 0.6, 0.1], [0.55, 0.45, 0], [0.9, 0.1, 0], [0.2, 0.1, 0.7]]
    wrong, unsure = error_analysis.ranked_mistakes(_frame(paths, [0, 0, 0, 0, 0], probs))
    assert wrong["path"].tolist() == ["0.png", "4.png", "1.png"]
    assert wrong["confidence"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert wrong["p_true"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert unsure["path"].tolist() == ["2.png", "3.png"]
    assert isinstance(wrong, pd.DataFrame) and list(wrong.columns)[:3] == ["path", "true_class", "pred_class"]


# ---- the explorer over a run's files --------------------------------------------------------------


@pytest.fixture
def run_with_predictions(tmp_path):
    from core import runs

    run = runs.create_run(tmp_path, "explorer", {"class_names": ["cat", "dog", "fox"], "architecture": "compact_cnn"})
    labels, probs = _noisy_predictions(90, seed=6)
    test = _frame([f"t/{i}.png" for i in range(90)], labels, probs)
    runs.atomic_write_csv(run.file(runs.PREDICTIONS_FILE), test)
    val_labels, val_probs = _noisy_predictions(60, seed=7)
    sharp = val_probs**4 / (val_probs**4).sum(axis=1, keepdims=True)  # over-confident
    runs.atomic_write_csv(run.file("val_predictions.csv"), _frame([f"v/{i}.png" for i in range(60)], val_labels, sharp))
    return run, test


def test_extended_metrics_have_the_interface_metrics_json_promises(run_with_predictions):
    from core import explorer

    _, test = run_with_predictions
    extra = explorer.extended_metrics(test, resamples=100)
    assert 0.0 <= extra["ece"] <= 1.0 and 0.0 <= extra["brier"] <= 2.0
    assert set(extra["confidence_intervals"]) == {"accuracy", "macro_f1", "roc_auc_macro"}
    low, high = extra["confidence_intervals"]["accuracy"]
    assert low <= float(test["correct"].mean()) <= high
    assert list(extra["top_k_accuracy"]) == ["1", "2"] and extra["top_k_accuracy"]["2"] >= extra["top_k_accuracy"]["1"]


def test_temperature_fit_on_the_validation_split_is_saved_and_applied_only_when_chosen(run_with_predictions):
    from core import explorer

    run, test = run_with_predictions
    assert explorer.load_calibration(run) is None
    fit = explorer.fit_run_temperature(run)
    assert fit["temperature"] > 1.5 and fit["log_loss_after"] < fit["log_loss_before"]
    explorer.save_calibration(run, fit)
    assert explorer.load_calibration(run)["temperature"] == pytest.approx(fit["temperature"])
    scaled = explorer.calibrated(test, fit["temperature"])
    assert (scaled["pred_class"] == test["pred_class"]).all()
    assert scaled["confidence"].mean() < test["confidence"].mean()
    explorer.clear_calibration(run)
    assert explorer.load_calibration(run) is None


def test_a_saved_threshold_changes_the_predicted_class_everywhere(run_with_predictions):
    from core import explorer

    run, test = run_with_predictions
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    assert explorer.predicted_index(run, probs).tolist() == [0, 2]
    explorer.save_threshold(run, "dog", 0.25)
    assert explorer.predicted_index(run, probs).tolist() == [1, 2]
    view = explorer.threshold_view(test, "dog", 0.25)
    assert view["point"]["tp"] + view["point"]["fn"] == int((test["true_class"] == "dog").sum())
    assert set(view["presets"]) == {"youden", "sensitivity >= 0.95", "specificity >= 0.95"}
    with pytest.raises(explorer.ExplorerError, match="Unknown class"):
        explorer.save_threshold(run, "zebra", 0.5)
    explorer.clear_threshold(run)
    assert explorer.predicted_index(run, probs).tolist() == [0, 2]


def test_a_run_without_validation_predictions_says_how_to_get_them(tmp_path):
    from core import explorer, runs

    run = runs.create_run(tmp_path, "bare", {"class_names": ["a", "b"]})
    with pytest.raises(explorer.ExplorerError, match="evaluate it again"):
        explorer.fit_run_temperature(run)


def test_class_curves_match_scikit_learn_for_each_class_vs_the_rest(run_with_predictions):
    from sklearn.metrics import roc_auc_score

    from core import explorer

    _, test = run_with_predictions
    labels = test["true_label"].to_numpy()
    for index, name in enumerate(["cat", "dog", "fox"]):
        roc, pr = explorer.class_curves(test, name)
        assert roc["auc"] == pytest.approx(roc_auc_score(labels == index, test[f"prob_{name}"]))
        assert 0 <= pr["average_precision"] <= 1
    only_cats = test[test["true_class"] == "cat"]
    roc, pr = explorer.class_curves(only_cats, "cat")
    assert roc is None and pr is not None


def test_paired_comparison_matches_images_by_path_and_refuses_unlike_runs(run_with_predictions):
    from core import explorer

    _, test = run_with_predictions
    better = test.copy()
    for name in ("cat", "dog", "fox"):
        better[f"prob_{name}"] = (better["true_class"] == name).astype(float) * 0.9 + 0.05
    result = explorer.paired_comparison(test, better.iloc[::-1].reset_index(drop=True), resamples=100)
    assert result["shared_images"] == 90 and result["only_a"] == 0
    assert result["accuracy"]["difference"] == pytest.approx(1.0 - test["correct"].mean())
    assert result["accuracy"]["b_better"]
    with pytest.raises(explorer.ExplorerError, match="share no test image"):
        explorer.paired_comparison(test, better.assign(path=better["path"] + "x"))
    renamed = better.rename(columns={"prob_fox": "prob_wolf"})
    with pytest.raises(explorer.ExplorerError, match="different classes"):
        explorer.paired_comparison(test, renamed)


def test_the_predictions_table_and_metrics_follow_a_saved_threshold(run_with_predictions):
    from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

    from core import evaluation, explorer

    run, test = run_with_predictions
    saved = {**evaluation.compute_metrics(test), "ece": 0.1}
    assert explorer.decided_predictions(run, test) is test  # no threshold: the table as it is
    assert explorer.decided_metrics(run, test, saved) is saved
    explorer.save_threshold(run, "dog", 0.25)
    decided = explorer.decided_predictions(run, test)
    _, y_true, probs = explorer.arrays(test)
    expected = np.where(probs[:, 1] >= 0.25, 1, np.where(probs[:, 0] >= probs[:, 2], 0, 2))
    assert decided["pred_label"].tolist() == expected.tolist()
    assert int((decided["pred_label"] != test["pred_label"]).sum()) > 0  # the threshold changes some
    assert decided["correct"].tolist() == (expected == y_true).tolist()
    np.testing.assert_allclose(decided["confidence"], probs[np.arange(len(expected)), expected])
    np.testing.assert_array_equal(decided.filter(like="prob_").to_numpy(), test.filter(like="prob_").to_numpy())
    metrics = explorer.decided_metrics(run, decided, saved)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, expected))
    assert metrics["argmax_accuracy"] == pytest.approx(accuracy_score(y_true, probs.argmax(axis=1)))
    assert metrics["per_class"]["dog"]["recall"] == pytest.approx(recall_score(y_true, expected, average=None)[1])
    assert metrics["per_class"]["dog"]["roc_auc"] == saved["per_class"]["dog"]["roc_auc"]  # not a decision
    assert metrics["roc_auc_macro"] == saved["roc_auc_macro"] and metrics["ece"] == 0.1
    assert metrics["decision_threshold"] == {"class": "dog", "threshold": 0.25}
    matrix = evaluation.confusion_matrix(decided).to_numpy()
    np.testing.assert_array_equal(matrix, confusion_matrix(y_true, expected))
