"""Multi-label classification metrics (ChestX-ray14 protocol) as pure numpy functions.

Axis layout: ``y_true`` is ``(N, K)`` in {0, 1} (sample ``n`` has finding ``k``), ``y_score`` is ``(N, K)`` real
(logits or probabilities: every metric here depends on the scores only through their order or a threshold on
them). ``labels`` names the ``K`` columns; per-class results are dicts ``label -> value`` in column order.

Protocol (CheXNet, Rajpurkar et al. 2017; Wang et al. 2017): the headline number is the per-finding AUROC and its
mean over findings; F1, sensitivity and specificity need a threshold per finding, chosen on the *validation*
split to maximise that finding's F1 (:func:`thresholds_max_f1`) and then applied unchanged to the test split.
A value that a split cannot define (AUROC of a finding with no positive, or no negative, sample) is NaN, and the
means skip NaNs (:func:`mean_defined`).

The ranking metrics are computed here in numpy (:func:`_binary_auroc`, :func:`_binary_average_precision`,
:func:`_precision_recall_curve`) rather than imported from ``sklearn.metrics``, whose import alone costs ~2.4
CPU-seconds per process; they equal scikit-learn's to float round-off (tests/metrics/test_classification.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "auroc_per_class",
    "average_precision_per_class",
    "classification_metrics",
    "f1_sensitivity_specificity",
    "mean_defined",
    "thresholds_max_f1",
]


def _as_multilabel(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` as bool and ``y_score`` as float64 after checking both are equal-shaped non-empty ``(N, K)``."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.size == 0:
        raise ValueError(
            f"need y_true and y_score of one non-empty shape (N, K), got {y_true.shape} and {y_score.shape}"
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1 (one column per finding)")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score must be finite")
    return y_true.astype(bool), y_score


def _names(labels: Sequence[str], n_columns: int) -> list[str]:
    if len(labels) != n_columns:
        raise ValueError(f"got {len(labels)} labels for {n_columns} columns")
    return [str(label) for label in labels]


def _binary_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUROC of one binary column (bool ``y_true``, both classes present), the Mann-Whitney U statistic.

    ``AUROC = (sum_{i positive} rank_i - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)`` with 1-based ranks of
    ``y_score`` ascending and tied scores given their average rank (``rank = #{s < s_i} + (#{s = s_i} + 1) / 2``),
    which counts a tied (positive, negative) pair as 1/2. Equals ``sklearn.metrics.roc_auc_score``.
    """
    ordered = np.sort(y_score)
    ranks = (np.searchsorted(ordered, y_score, "left") + np.searchsorted(ordered, y_score, "right") + 1) / 2
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _precision_recall_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of one binary column (bool ``y_true``, >= 1 positive) at each distinct score.

    Calling ``score >= t`` positive at each distinct score ``t``: ``P(t) = TP(t) / (TP(t) + FP(t))``,
    ``R(t) = TP(t) / n_pos``. Returns ``(precision, recall, thresholds)`` in the layout of
    ``sklearn.metrics.precision_recall_curve``: thresholds ascending (``(T,)``), precision and recall ``(T + 1,)``
    at those thresholds followed by a last point ``(P = 1, R = 0)`` that belongs to no threshold.
    """
    order = np.argsort(y_score, kind="stable")[::-1]  # descending score
    score, positive = y_score[order], y_true[order]
    last = np.append(np.flatnonzero(np.diff(score)), len(score) - 1)  # last sample of each distinct score
    tp = np.cumsum(positive)[last]
    precision, recall = tp / (last + 1), tp / tp[-1]  # last + 1 = TP + FP = samples with score >= t
    return np.append(precision[::-1], 1.0), np.append(recall[::-1], 0.0), score[last][::-1]


def _binary_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision of one binary column (bool ``y_true``, >= 1 positive), no interpolation.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct scores ``n`` in decreasing order (``R_0 = 0``), with
    ``P_n``, ``R_n`` from :func:`_precision_recall_curve`. Equals ``sklearn.metrics.average_precision_score``.
    """
    precision, recall, _ = _precision_recall_curve(y_true, y_score)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def auroc_per_class(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Area under the ROC curve of each finding, ``label -> AUROC`` in [0, 1].

    ``AUROC_k = P(s_pos > s_neg) + P(s_pos = s_neg) / 2`` over all (positive, negative) sample pairs of column
    ``k`` (the Mann-Whitney U statistic over ``n_pos * n_neg``, :func:`_binary_auroc`). NaN where the
    column holds only positives or only negatives: there is no pair to rank.
    """
    y_true, y_score = _as_multilabel(y_true, y_score)
    names = _names(labels, y_true.shape[1])
    values = [_binary_auroc(t, s) if 0 < t.sum() < len(t) else np.nan for t, s in zip(y_true.T, y_score.T)]
    return {name: float(value) for name, value in zip(names, values)}


def average_precision_per_class(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Average precision of each finding, ``label -> AP`` in [0, 1] (area under the precision-recall curve).

    ``AP_k = sum_i (R_i - R_{i-1}) P_i`` over the thresholds ``i`` at the distinct scores, descending
    (:func:`_binary_average_precision`, no interpolation). A random score has AP ≈ the prevalence
    ``n_pos / N``. NaN where the column has no positive (recall undefined).
    """
    y_true, y_score = _as_multilabel(y_true, y_score)
    names = _names(labels, y_true.shape[1])
    values = [_binary_average_precision(t, s) if t.any() else np.nan for t, s in zip(y_true.T, y_score.T)]
    return {name: float(value) for name, value in zip(names, values)}


def thresholds_max_f1(y_true_val: np.ndarray, y_score_val: np.ndarray) -> np.ndarray:
    """Per-finding decision thresholds maximising F1 on the validation split, ``(K,)``.

    A sample is called positive when ``score >= threshold``. Candidates are the distinct validation scores of the
    column; ``F1(t) = 2 P(t) R(t) / (P(t) + R(t))`` with precision ``P`` and recall ``R`` at ``t``; the smallest
    of tied maximisers wins (the more sensitive choice). A finding with no positive in validation gets ``+inf``
    (never called positive): no threshold has F1 > 0 there.
    """
    y_true, y_score = _as_multilabel(y_true_val, y_score_val)
    thresholds = np.full(y_true.shape[1], np.inf)
    for k, (t, s) in enumerate(zip(y_true.T, y_score.T)):
        if t.any():
            precision, recall, candidates = _precision_recall_curve(t, s)  # candidates ascending
            p, r = precision[:-1], recall[:-1]  # the last entry (P = 1, R = 0) belongs to no threshold
            f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)
            thresholds[k] = candidates[np.argmax(f1)]
    return thresholds


def f1_sensitivity_specificity(
    y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray, labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """F1, sensitivity and specificity of each finding at fixed thresholds, ``label -> {f1, sensitivity,
    specificity}``.

    With ``pred = score >= threshold_k`` and counts TP, FP, TN, FN of column ``k``:
    ``F1 = 2 TP / (2 TP + FP + FN)``, ``sensitivity = TP / (TP + FN)`` (recall), ``specificity = TN / (TN + FP)``.
    Each is NaN where its denominator is 0 (F1: no positive and none predicted; sensitivity: no positive;
    specificity: no negative).
    """
    y_true, y_score = _as_multilabel(y_true, y_score)
    names = _names(labels, y_true.shape[1])
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (y_true.shape[1],):
        raise ValueError(f"need one threshold per column, shape ({y_true.shape[1]},), got {thresholds.shape}")
    pred = y_score >= thresholds
    tp = (pred & y_true).sum(axis=0)
    fp = (pred & ~y_true).sum(axis=0)
    fn = (~pred & y_true).sum(axis=0)
    tn = (~pred & ~y_true).sum(axis=0)
    columns = {"f1": (2 * tp, 2 * tp + fp + fn), "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp)}
    ratios = {
        metric: np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)
        for metric, (num, den) in columns.items()
    }
    return {name: {metric: float(r[k]) for metric, r in ratios.items()} for k, name in enumerate(names)}


def mean_defined(per_class: Mapping[str, float]) -> float:
    """Unweighted mean over the classes whose value is defined (not NaN); NaN if none is."""
    values = np.array([v for v in per_class.values() if not np.isnan(v)])
    return float(values.mean()) if values.size else float("nan")


def classification_metrics(
    y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray, labels: Sequence[str]
) -> dict:
    """Everything the cxr evaluation reports for one split, at thresholds chosen on validation.

    Returns:
        ``{"mean_auroc", "mean_average_precision", "mean_f1": float (NaN-skipping means over findings),
        "per_class": {label: {"auroc", "average_precision", "f1", "sensitivity", "specificity", "threshold",
        "n_positive"}}}``.
    """
    auroc = auroc_per_class(y_true, y_score, labels)
    ap = average_precision_per_class(y_true, y_score, labels)
    at_threshold = f1_sensitivity_specificity(y_true, y_score, thresholds, labels)
    n_positive = np.asarray(y_true).sum(axis=0)
    per_class = {
        label: {"auroc": auroc[label], "average_precision": ap[label], **at_threshold[label],
                "threshold": float(thresholds[k]), "n_positive": int(n_positive[k])}
        for k, label in enumerate(auroc)
    }  # fmt: skip
    return {
        "mean_auroc": mean_defined(auroc),
        "mean_average_precision": mean_defined(ap),
        "mean_f1": mean_defined({label: row["f1"] for label, row in per_class.items()}),
        "per_class": per_class,
    }
