"""Hand-computed cases for flexheads.metrics.classification."""

import math

import numpy as np
import pytest

from flexheads.metrics.classification import (
    auroc_per_class,
    average_precision_per_class,
    classification_metrics,
    f1_sensitivity_specificity,
    mean_defined,
    thresholds_max_f1,
)

# Column "a": 2 negatives (0.1, 0.4), 2 positives (0.35, 0.8). Of the 4 (pos, neg) pairs only (0.35, 0.4) is
# ranked wrongly: AUROC = 3/4. By descending score: 0.8 + (P 1, R 1/2), 0.4 - , 0.35 + (P 2/3, R 1):
# AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. Column "b": no positive, so both are undefined.
Y4 = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
S4 = np.array([[0.1, 0.3], [0.4, 0.2], [0.35, 0.1], [0.8, 0.9]])


def test_auroc_by_hand_with_an_undefined_class():
    auroc = auroc_per_class(Y4, S4, ["a", "b"])
    assert list(auroc) == ["a", "b"]
    assert auroc["a"] == pytest.approx(0.75)
    assert math.isnan(auroc["b"])
    assert mean_defined(auroc) == pytest.approx(0.75)


def test_auroc_counts_ties_as_half_and_is_rank_based():
    assert auroc_per_class([[0], [1]], [[0.5], [0.5]], ["x"])["x"] == 0.5
    assert auroc_per_class(Y4, np.exp(3 * S4), ["a", "b"])["a"] == pytest.approx(0.75)  # monotone map: same ranks
    assert auroc_per_class(1 - Y4[:, :1], S4[:, :1], ["a"])["a"] == pytest.approx(0.25)  # swapped classes


def test_average_precision_by_hand():
    ap = average_precision_per_class(Y4, S4, ["a", "b"])
    assert ap["a"] == pytest.approx(5 / 6)
    assert math.isnan(ap["b"])


# Thresholds on 5 samples. Column 0, y = 0 1 0 1 1 at scores 0.1 0.2 0.3 0.6 0.9; calling score >= t positive:
#   t = 0.1: TP 3 FP 2 -> F1 = 6/8;  t = 0.2: TP 3 FP 1 -> 6/7;  t = 0.3: TP 2 FP 1 FN 1 -> 4/6;
#   t = 0.6: TP 2 FN 1 -> 4/5;       t = 0.9: TP 1 FN 2 -> 2/4.  Best: 0.2.
# Column 1, y = 1 0 0 1 0 at 0.9 0.8 0.7 0.6 0.5: F1 = 2/3 at t = 0.9 and at t = 0.6 (TP 2 FP 2): the smaller wins.
# Column 2 has no positive: +inf.
Y5 = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 0, 0]])
S5 = np.array([[0.1, 0.9, 0.5], [0.2, 0.8, 0.4], [0.3, 0.7, 0.3], [0.6, 0.6, 0.2], [0.9, 0.5, 0.1]])


def test_thresholds_maximise_f1_on_five_samples():
    np.testing.assert_array_equal(thresholds_max_f1(Y5, S5), [0.2, 0.6, np.inf])


def test_f1_sensitivity_specificity_at_fixed_thresholds():
    result = f1_sensitivity_specificity(Y5, S5, np.array([0.2, 0.6, np.inf]), ["a", "b", "c"])
    assert result["a"] == pytest.approx({"f1": 6 / 7, "sensitivity": 1.0, "specificity": 1 / 2})  # TP 3 FP 1 TN 1
    assert result["b"] == pytest.approx({"f1": 2 / 3, "sensitivity": 1.0, "specificity": 1 / 3})  # TP 2 FP 2 TN 1
    assert math.isnan(result["c"]["f1"]) and math.isnan(result["c"]["sensitivity"])  # nothing to find, none called
    assert result["c"]["specificity"] == 1.0


def test_classification_metrics_collects_the_per_class_table():
    labels = ["a", "b", "c"]
    metrics = classification_metrics(Y5, S5, thresholds_max_f1(Y5, S5), labels)
    assert list(metrics["per_class"]) == labels
    row = metrics["per_class"]["a"]
    assert row["threshold"] == 0.2 and row["n_positive"] == 3 and row["f1"] == pytest.approx(6 / 7)
    assert row["auroc"] == pytest.approx(auroc_per_class(Y5, S5, labels)["a"])
    assert metrics["mean_f1"] == pytest.approx((6 / 7 + 2 / 3) / 2)  # class c's NaN is skipped
    assert metrics["mean_auroc"] == pytest.approx(mean_defined(auroc_per_class(Y5, S5, labels)))


def test_mean_defined_of_nothing_defined_is_nan():
    assert math.isnan(mean_defined({"a": float("nan")}))


@pytest.mark.parametrize(
    ("y_true", "y_score", "labels", "match"),
    [
        (Y4, S4[:, :1], ["a", "b"], "one non-empty shape"),
        (Y4 * 2, S4, ["a", "b"], "only 0 and 1"),
        (Y4, S4, ["a"], "labels for 2 columns"),
        (Y4, S4 * np.nan, ["a", "b"], "finite"),
    ],
)
def test_bad_inputs_are_rejected(y_true, y_score, labels, match):
    with pytest.raises(ValueError, match=match):
        auroc_per_class(y_true, y_score, labels)
