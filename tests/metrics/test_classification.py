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


# The ranking metrics are numpy re-implementations of scikit-learn's (not imported at run time: its import costs
# ~2.4 CPU-seconds per process). Hand cases first, then a cross-check against scikit-learn on random columns.


def test_private_auroc_and_average_precision_by_hand():
    from flexheads.metrics.classification import _binary_auroc, _binary_average_precision

    t = np.array([0, 0, 1, 1], dtype=bool)
    assert _binary_auroc(t, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert _binary_average_precision(t, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)
    # Ties: scores 0.2 0.5 0.5 0.5 0.9 for y = 0 0 1 1 1 have average ranks 1, 3, 3, 3, 5; positives' rank sum
    # 11 - 3*4/2 = 5 over 3*2 pairs: AUROC = 5/6 (pairs (0.5+, 0.5-) count 1/2 each: 4 + 2 * 1/2 = 5).
    t = np.array([0, 0, 1, 1, 1], dtype=bool)
    s = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    assert _binary_auroc(t, s) == pytest.approx(5 / 6)
    # AP: t = 0.9 -> (P 1, R 1/3); t = 0.5 -> (P 3/4, R 1); AP = 1/3 * 1 + 2/3 * 3/4 = 5/6.
    assert _binary_average_precision(t, s) == pytest.approx(5 / 6)


def test_private_precision_recall_curve_by_hand():
    from flexheads.metrics.classification import _precision_recall_curve

    precision, recall, thresholds = _precision_recall_curve(
        np.array([0, 0, 1, 1], dtype=bool), np.array([0.1, 0.4, 0.35, 0.8])
    )
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(recall, [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_array_equal(thresholds, [0.1, 0.35, 0.4, 0.8])


def _random_columns(n_columns: int = 50, seed: int = 0, n_samples: int | None = None):
    """Random (y_true, y_score) columns, 2..60 samples unless ``n_samples``; most have many tied scores."""
    rng = np.random.default_rng(seed)
    for i in range(n_columns):
        n = n_samples or int(rng.integers(2, 61))
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        if i % 5 == 0:
            score = rng.normal(size=n)  # continuous scores: no tie
        else:
            score = rng.integers(0, int(rng.integers(2, 8)), size=n) / 7 + 0.3 * y * (i % 2)  # few levels: ties
        yield y, score


def test_ranking_metrics_equal_scikit_learn_on_random_columns_with_ties():
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    from flexheads.metrics.classification import _precision_recall_curve

    n_checked = 0
    for y, score in _random_columns():
        if y.any():
            ours, theirs = _precision_recall_curve(y, score), precision_recall_curve(y, score)
            for a, b in zip(ours, theirs):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        if 0 < y.sum() < len(y):
            n_checked += 1
            assert auroc_per_class(y[:, None], score[:, None], ["a"])["a"] == pytest.approx(
                roc_auc_score(y, score), rel=0, abs=1e-12
            )
            assert average_precision_per_class(y[:, None], score[:, None], ["a"])["a"] == pytest.approx(
                average_precision_score(y, score), rel=0, abs=1e-12
            )
    assert n_checked >= 40


def _thresholds_max_f1_with_scikit_learn(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """The threshold chooser as it was written on ``sklearn.metrics.precision_recall_curve``."""
    from sklearn.metrics import precision_recall_curve

    thresholds = np.full(y_true.shape[1], np.inf)
    for k, (t, s) in enumerate(zip(y_true.T.astype(bool), y_score.T)):
        if t.any():
            precision, recall, candidates = precision_recall_curve(t, s)
            p, r = precision[:-1], recall[:-1]
            f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)
            thresholds[k] = candidates[np.argmax(f1)]
    return thresholds


def test_thresholds_max_f1_unchanged_from_scikit_learn_on_random_columns():
    for seed in range(5):  # (N, 10) matrices, then 50 single columns of every length
        y_true, y_score = (np.stack(c, axis=1) for c in zip(*_random_columns(10, seed, n_samples=10 + 20 * seed)))
        expected = _thresholds_max_f1_with_scikit_learn(y_true, y_score)
        np.testing.assert_array_equal(thresholds_max_f1(y_true.astype(int), y_score), expected)
    for y, score in _random_columns():
        expected = _thresholds_max_f1_with_scikit_learn(y[:, None], score[:, None])
        np.testing.assert_array_equal(thresholds_max_f1(y[:, None], score[:, None]), expected)


def test_importing_the_classification_metrics_does_not_import_scikit_learn():
    import subprocess
    import sys

    code = "import sys, flexheads.metrics.classification; print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
