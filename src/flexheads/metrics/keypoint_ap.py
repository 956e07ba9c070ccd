"""COCO keypoint AP from per-person OKS and scores, as pure numpy functions: the bootstrap's pose2d metric.

:func:`flexheads.metrics.pose2d.coco_keypoint_ap` runs pycocotools on files; the report's bootstrap needs the AP
of a thousand resamples of the people, so it is recomputed here from what decides it: each detection's object
keypoint similarity (OKS) with its own ground-truth person and its score.  Axis layout as in
:mod:`flexheads.metrics.pose2d`: ``(N, 17, 2)`` keypoints in image pixels, ``(N, 17)`` bool ``visible``.

For one detection per ground-truth person (top-down evaluation on the ground-truth boxes) this is
``COCOeval(iouType="keypoints")``'s AP (``stats[0]``), provided that no detection matches another person of its
image better than its own at a threshold its own misses, no detection matches a crowd region instead, and no
image has more than 20 people (COCOeval's ``maxDets``).  tests/test_pose2d_task.py checks it against pycocotools
on evaluated data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COCO_SIGMAS", "OKS_THRESHOLDS", "RECALL_THRESHOLDS", "keypoint_ap", "object_keypoint_similarity"]

# per-keypoint OKS constants of COCO 2017 (pycocotools COCOeval.computeOks), in COCO_KEYPOINTS order
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval Params.iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval Params.recThrs


def object_keypoint_similarity(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, area: np.ndarray) -> np.ndarray:
    """OKS of each prediction with its ground-truth person, ``(N,)`` in [0, 1], as ``COCOeval.computeOks``:

    ``OKS_n = mean_{i visible} exp(-d_ni^2 / (2 (area_n + eps) (2 sigma_i)^2))`` with ``d_ni`` the pixel distance
    of keypoint ``i``, ``area_n`` the annotation's ``area`` (px^2), ``eps = np.spacing(1)``.  Every person needs a
    visible keypoint (COCOeval ignores the others).
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    visible, area = np.asarray(visible, dtype=bool), np.asarray(area, dtype=np.float64)
    n = len(gt)
    if pred.shape != gt.shape or gt.shape != (n, len(COCO_SIGMAS), 2) or visible.shape != gt.shape[:2] \
            or area.shape != (n,):
        raise ValueError(f"need pred and gt (N, 17, 2), visible (N, 17), area (N,); got {pred.shape}, {gt.shape}, "
                         f"{visible.shape}, {area.shape}")
    if not visible.any(axis=1).all():
        raise ValueError("every person needs a visible keypoint (COCOeval ignores people without one)")
    e = ((pred - gt) ** 2).sum(-1) / (2 * COCO_SIGMAS) ** 2 / (area[:, None] + np.spacing(1)) / 2  # (N, 17)
    return (np.exp(-e) * visible).sum(1) / visible.sum(1)


def keypoint_ap(oks: np.ndarray, score: np.ndarray, image_id: np.ndarray) -> float:
    """COCO keypoint AP of one detection per ground-truth person, with its OKS and score (``(N,)`` each, N >= 1).

    As ``COCOeval.accumulate`` for one category, all areas: detections in order of descending score (ties: by
    ``image_id``, then row order, as COCOeval concatenates images); at each threshold ``t`` of
    :data:`OKS_THRESHOLDS` a detection is a true positive when ``oks >= t``, ``recall_k = TP_k / N`` and
    ``precision_k = TP_k / k`` after the first ``k`` detections; precision is made non-increasing from the right
    (``p_k = max_{j >= k} p_j``) and read at the 101 :data:`RECALL_THRESHOLDS` ``r`` (at the first ``k`` with
    ``recall_k >= r``; 0 where no recall reaches ``r``).  AP is the mean over the 10 × 101 values.
    """
    oks, score, image_id = (np.asarray(a) for a in (oks, score, image_id))
    if oks.ndim != 1 or oks.shape != score.shape or oks.shape != image_id.shape or not oks.size:
        raise ValueError(f"need oks, score and image_id of one non-empty shape (N,), got "
                         f"{oks.shape}, {score.shape}, {image_id.shape}")
    order = np.lexsort((np.arange(len(oks)), image_id, -score.astype(np.float64)))
    hits = oks[order][None, :] >= OKS_THRESHOLDS[:, None]  # (T, N)
    tp = np.cumsum(hits, axis=1)
    recall = tp / len(oks)
    precision = np.maximum.accumulate((tp / np.arange(1, len(oks) + 1))[:, ::-1], axis=1)[:, ::-1]
    interpolated = np.zeros((len(OKS_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t in range(len(OKS_THRESHOLDS)):
        reached = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        inside = reached < len(oks)
        interpolated[t, inside] = precision[t, reached[inside]]
    return float(interpolated.mean())
