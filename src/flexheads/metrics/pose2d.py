"""2D human pose metrics (PCK, PCKh, PDJ, PCP, COCO OKS AP) as pure numpy functions.

Axis layout: keypoints are arrays ``(N, 17, 2)``: ``N`` persons, the 17 COCO joints in
:data:`COCO_KEYPOINTS` order, ``(x, y)`` last, in image pixels. ``visible`` is ``(N, 17)`` bool and
means *annotated* (COCO ``v > 0``); only annotated joints are scored. Thresholds and normalisers are
in pixels; scores come back as fractions in [0, 1].

Shared conventions:
  * a joint (or limb endpoint) is correct when its error is ``<=`` the threshold, as in the MPII
    evaluation code (``dist <= thresh``). This differs from the strict ``<`` of 3D PCK in
    :mod:`flexheads.metrics.pose3d`, which follows the MPI-INF-3DHP code.
  * a NaN prediction compares false, so a missing joint counts as a miss, never as a skip.
  * ``overall`` is micro-averaged: correct / counted over all joints (or limbs) of all persons.
  * a person whose normaliser is NaN (no head or torso in the ground truth) is excluded and counted
    in ``n_excluded``; nothing left to score raises ValueError rather than returning NaN.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from flexheads.io import write_json

__all__ = [
    "COCO_KEYPOINTS",
    "COCO_STATS",
    "LIMBS",
    "bbox_diagonal",
    "coco_keypoint_ap",
    "head_size_from_keypoints",
    "pck",
    "pckh",
    "pcp",
    "pdj",
    "torso_diameter",
    "write_coco_results",
]

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
N_JOINTS = len(COCO_KEYPOINTS)
L_EYE, R_EYE, L_EAR, R_EAR = 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 5, 6, 11, 12

# Limbs of strict PCP as (name, joint_a, joint_b). No torso: COCO has no neck or pelvis joint, and a
# shoulder-midpoint-to-hip-midpoint "torso" is not a pair of predicted joints. No head: no head top.
LIMBS = (
    ("left_upper_arm", 5, 7), ("right_upper_arm", 6, 8),
    ("left_forearm", 7, 9), ("right_forearm", 8, 10),
    ("left_thigh", 11, 13), ("right_thigh", 12, 14),
    ("left_shin", 13, 15), ("right_shin", 14, 16),
)  # fmt: skip

# Head-size estimate (see head_size_from_keypoints): eye centres sit about half an ear-to-ear width
# apart (interpupillary ~6.3 cm, bitragion breadth ~14.5 cm); a shoulder-to-opposite-hip diagonal of
# ~55 cm makes a quarter of it about one ear-to-ear width.
EYE_TO_HEAD = 2.0
TORSO_TO_HEAD = 0.25

# Order of COCOeval(iouType="keypoints").stats after summarize().
COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def _check_keypoints(keypoints: np.ndarray, name: str = "keypoints") -> np.ndarray:
    """Return ``keypoints`` as float64 after checking the shape is ``(N, 17, 2)`` with ``N >= 1``."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (N_JOINTS, 2) or keypoints.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, {N_JOINTS}, 2) with N >= 1, got {keypoints.shape}")
    return keypoints


def _check_visible(visible: np.ndarray, n_persons: int) -> np.ndarray:
    visible = np.asarray(visible)
    if visible.shape != (n_persons, N_JOINTS) or visible.dtype != bool:
        raise ValueError(
            f"visible must be a bool array of shape ({n_persons}, {N_JOINTS}) (COCO v > 0), "
            f"got {visible.dtype} {visible.shape}"
        )
    return visible


def _check_inputs(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, ...]:
    """Validate ``pred, gt (N, 17, 2)`` and ``visible (N, 17)`` bool; return them as arrays."""
    pred = _check_keypoints(pred, "pred")
    gt = _check_keypoints(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}")
    return pred, gt, _check_visible(visible, gt.shape[0])


def _check_per_person(values: np.ndarray, n_persons: int, name: str) -> np.ndarray:
    """``(N,)`` non-negative pixel lengths; NaN allowed (= person excluded)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n_persons,):
        raise ValueError(f"{name} must have shape ({n_persons},), got {values.shape}")
    if np.any(values < 0) or np.any(np.isinf(values)):
        raise ValueError(f"{name} must be finite and >= 0 (NaN excludes a person), got {values}")
    return values


def _check_alpha(alpha: float) -> None:
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0`` (a joint or limb never counted has no score)."""
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den != 0)


def _distance(points: np.ndarray, a: int, b: int, visible: np.ndarray) -> np.ndarray:
    """``||points[:, a] - points[:, b]||`` per person, NaN unless both are visible or if it is 0."""
    length = np.linalg.norm(points[:, a] - points[:, b], axis=-1)  # (N,)
    return np.where(visible[:, a] & visible[:, b] & (length > 0), length, np.nan)


def _joint_scores(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, threshold: np.ndarray) -> dict:
    """Score each visible joint as ``||pred - gt||_2 <= threshold[n]``; NaN thresholds exclude a person."""
    included = ~np.isnan(threshold)  # (N,)
    counted = visible & included[:, None]  # (N, 17)
    if not counted.any():
        raise ValueError("nothing to score: no visible joint on a person with a defined normaliser")
    errors = np.linalg.norm(pred - gt, axis=-1)  # (N, 17) px
    correct = counted & (errors <= np.where(included, threshold, 0.0)[:, None])
    return {
        "per_joint": _ratio(correct.sum(axis=0), counted.sum(axis=0)),  # (17,)
        "overall": float(correct.sum() / counted.sum()),
        "n_excluded": int((~included).sum()),
    }


def bbox_diagonal(bboxes: np.ndarray) -> np.ndarray:
    """Diagonal ``sqrt(w^2 + h^2)`` of COCO ``[x, y, w, h]`` boxes: ``(N, 4) -> (N,)`` in px.

    The usual normaliser for :func:`pck` w.r.t. the ground-truth box. For the max-side variant of
    Yang & Ramanan (2013) pass ``bboxes[:, 2:].max(axis=1)`` instead.
    """
    bboxes = np.asarray(bboxes, dtype=np.float64)
    if bboxes.ndim != 2 or bboxes.shape[1] != 4:
        raise ValueError(f"bboxes must have shape (N, 4) as [x, y, w, h], got {bboxes.shape}")
    if np.any(bboxes[:, 2:] < 0):
        raise ValueError("bboxes must have w >= 0 and h >= 0")
    return np.hypot(bboxes[:, 2], bboxes[:, 3])


def torso_diameter(gt: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Torso diameter of DeepPose (Toshev & Szegedy 2014): ``||l_shoulder - r_hip||`` in px, ``(N,)``.

    Falls back to the other diagonal ``||r_shoulder - l_hip||`` when the first is not annotated (or has
    zero length); NaN when neither diagonal is available. Left/right are the person's own sides.
    """
    gt = _check_keypoints(gt, "gt")
    visible = _check_visible(visible, gt.shape[0])
    diameter = _distance(gt, L_SHOULDER, R_HIP, visible)
    return np.where(np.isnan(diameter), _distance(gt, R_SHOULDER, L_HIP, visible), diameter)


def head_size_from_keypoints(gt: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Head-size estimate for PCKh on COCO, which has no head box: ``(N, 17, 2) -> (N,)`` in px.

    MPII uses ``0.6 * ||head-box diagonal||`` (Andriluka et al. 2014). COCO offers only face and body
    joints, so per person the first available of:
      1. ``||l_ear - r_ear||`` (both ears annotated);
      2. ``EYE_TO_HEAD * ||l_eye - r_eye||`` = 2x the eye distance (both eyes annotated);
      3. ``TORSO_TO_HEAD * torso_diameter`` = 0.25x the shoulder-to-opposite-hip diagonal;
      4. NaN (the person is excluded from :func:`pckh`).
    A zero-length pair counts as missing. Width-based estimates shrink in profile views, so PCKh with
    this estimate compares models on COCO only; it is not comparable with MPII PCKh@0.5 numbers.
    """
    gt = _check_keypoints(gt, "gt")
    visible = _check_visible(visible, gt.shape[0])
    size = _distance(gt, L_EAR, R_EAR, visible)
    size = np.where(np.isnan(size), EYE_TO_HEAD * _distance(gt, L_EYE, R_EYE, visible), size)
    return np.where(np.isnan(size), TORSO_TO_HEAD * torso_diameter(gt, visible), size)


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray, alpha: float = 0.2) -> dict:
    """PCK@alpha: fraction of visible joints with ``||pred_nj - gt_nj||_2 <= alpha * norm[n]``.

    PCK w.r.t. the person box (Yang & Ramanan 2013) passes ``norm = bbox_diagonal(gt_boxes)`` (or the
    box's max side).

    Args:
        pred, gt: ``(N, 17, 2)`` in px. visible: ``(N, 17)`` bool.
        norm: ``(N,)`` per-person normaliser in px; NaN excludes the person.
    Returns:
        ``{"per_joint": (17,) fractions, NaN for a joint never visible, "overall": float,
        "n_excluded": int}``.
    """
    pred, gt, visible = _check_inputs(pred, gt, visible)
    norm = _check_per_person(norm, gt.shape[0], "norm")
    _check_alpha(alpha)
    return _joint_scores(pred, gt, visible, alpha * norm)


def pckh(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_size: np.ndarray, alpha: float = 0.5) -> dict:
    """PCKh@alpha (Andriluka et al. 2014): correct when ``||pred_nj - gt_nj||_2 <= alpha * head_size[n]``.

    On MPII ``head_size`` is 0.6x the head-box diagonal; on COCO use :func:`head_size_from_keypoints`
    (its NaNs exclude persons). Same arguments and return as :func:`pck`.
    """
    pred, gt, visible = _check_inputs(pred, gt, visible)
    head_size = _check_per_person(head_size, gt.shape[0], "head_size")
    _check_alpha(alpha)
    return _joint_scores(pred, gt, visible, alpha * head_size)


def pdj(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, alpha: float = 0.2) -> dict:
    """PDJ@alpha (Toshev & Szegedy 2014): correct when ``||pred_nj - gt_nj||_2 <= alpha * torso[n]``.

    ``torso = torso_diameter(gt, visible)`` (left shoulder to right hip, else right shoulder to left
    hip); persons with neither diagonal annotated are excluded and counted in ``n_excluded``. Returns
    the dict of :func:`pck`.
    """
    pred, gt, visible = _check_inputs(pred, gt, visible)
    _check_alpha(alpha)
    return _joint_scores(pred, gt, visible, alpha * torso_diameter(gt, visible))


def pcp(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, alpha: float = 0.5) -> dict:
    """Strict PCP@alpha (Ferrari et al. 2008) over the :data:`LIMBS` (arms and legs, no torso/head).

    A limb ``(a, b)`` is correct when *both* ``||pred_a - gt_a||`` and ``||pred_b - gt_b||`` are
    ``<= alpha * ||gt_a - gt_b||`` (px). "Loose" PCP, which averages the two endpoint errors, scores
    higher and is not used here. A limb counts only when both endpoints are visible.

    Returns:
        ``{"per_limb": {name: fraction, NaN if never counted}, "overall": float}``.
    """
    pred, gt, visible = _check_inputs(pred, gt, visible)
    _check_alpha(alpha)
    a = np.array([limb[1] for limb in LIMBS])
    b = np.array([limb[2] for limb in LIMBS])
    errors = np.linalg.norm(pred - gt, axis=-1)  # (N, 17) px
    threshold = alpha * np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)  # (N, L) px
    counted = visible[:, a] & visible[:, b]  # (N, L)
    if not counted.any():
        raise ValueError("nothing to score: no limb has both endpoints visible")
    correct = counted & (errors[:, a] <= threshold) & (errors[:, b] <= threshold)
    per_limb = _ratio(correct.sum(axis=0), counted.sum(axis=0))  # (L,)
    return {
        "per_limb": {name: float(score) for (name, _, _), score in zip(LIMBS, per_limb)},
        "overall": float(correct.sum() / counted.sum()),
    }


def write_coco_results(
    path: str | Path,
    image_ids: Sequence[int] | np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    visibility_or_confidence: np.ndarray | None = None,
) -> None:
    """Write keypoint detections in the COCO results format, atomically.

    Each person ``n`` becomes ``{"image_id", "category_id": 1, "keypoints": [x1, y1, v1, ...]
    (51 floats, px), "score"}``. COCOeval ignores the ``v`` entries (OKS uses only x, y); they default
    to 1 and may carry per-joint confidences. No ``bbox`` is written, so ``COCO.loadRes`` derives box
    and area from the keypoints.

    Args:
        image_ids: ``(N,)`` COCO image ids. keypoints: ``(N, 17, 2)`` in px, ``N = 0`` allowed.
        scores: ``(N,)`` person scores (rank detections for AP). visibility_or_confidence: ``(N, 17)``.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (N_JOINTS, 2):
        raise ValueError(f"keypoints must have shape (N, {N_JOINTS}, 2), got {keypoints.shape}")
    n_persons = keypoints.shape[0]
    image_ids = np.asarray(image_ids)
    scores = np.asarray(scores, dtype=np.float64)
    v = np.ones((n_persons, N_JOINTS)) if visibility_or_confidence is None else visibility_or_confidence
    v = np.asarray(v, dtype=np.float64)
    expected = {"image_ids": (n_persons,), "scores": (n_persons,), "visibility_or_confidence": (n_persons, N_JOINTS)}
    for name, array in [("image_ids", image_ids), ("scores", scores), ("visibility_or_confidence", v)]:
        if array.shape != expected[name]:
            raise ValueError(
                f"{name} must have shape {expected[name]} to match keypoints {keypoints.shape}, got {array.shape}"
            )
    if n_persons and not np.issubdtype(image_ids.dtype, np.integer):
        raise ValueError(f"image_ids must be integers, got dtype {image_ids.dtype}")
    if not (np.isfinite(keypoints).all() and np.isfinite(scores).all() and np.isfinite(v).all()):
        raise ValueError("keypoints, scores and visibility_or_confidence must be finite (JSON has no NaN)")
    triplets = np.concatenate([keypoints, v[..., None]], axis=-1).reshape(n_persons, 3 * N_JOINTS)  # x, y, v
    detections = [
        {"image_id": int(image_id), "category_id": 1, "keypoints": row.tolist(), "score": float(score)}
        for image_id, row, score in zip(image_ids, triplets, scores)
    ]
    write_json(path, detections)

def _load_results(results_json: str | Path, gt_image_ids: set[int]) -> list[dict]:
    """Read a results file and reject what ``COCO.loadRes`` would crash on or silently misread."""
    with open(results_json) as f:
        results = json.load(f)
    if not isinstance(results, list) or not results:
        raise ValueError(f"results file {results_json} holds no detections (need a non-empty JSON list)")
    for det in results:
        if not {"image_id", "keypoints", "score"} <= det.keys() or len(det["keypoints"]) != 3 * N_JOINTS:
            raise ValueError(
                f"results file {results_json}: every detection needs image_id, score and 51 keypoint values, got {det}"
            )
    result_ids = {det["image_id"] for det in results}
    unknown = result_ids - gt_image_ids
    if unknown == result_ids:
        raise ValueError(f"results file {results_json} has no detections for the ground-truth images")
    if unknown:
        raise ValueError(f"results file {results_json} has image_ids not in the ground truth: {sorted(unknown)[:10]}")
    return results


def coco_keypoint_ap(gt_json: str | Path, results_json: str | Path) -> dict[str, float]:
    """COCO keypoint AP/AR by OKS, exactly ``COCOeval(gt, dt, iouType="keypoints").stats``.

    OKS (COCO 2017; Ronchi & Perona 2017) between a detection and a gt person with area ``s^2`` px^2:
    ``sum_i exp(-d_i^2 / (2 s^2 k_i^2)) [v_i > 0] / sum_i [v_i > 0]`` with ``k_i = 2 sigma_i`` the
    per-joint COCO constants. AP averages precision over OKS thresholds 0.50:0.05:0.95 (AP50/AP75 at
    one threshold) with at most 20 detections per image; APm/APl restrict to gt area in
    ``[32^2, 96^2]`` / ``> 96^2`` px^2. A stat is -1 where COCOeval has nothing to evaluate.

    Returns:
        ``{name: float}`` for the names in :data:`COCO_STATS`, in that order.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # COCO/COCOeval print progress and the summary table
        coco_gt = COCO(str(gt_json))
        coco_dt = coco_gt.loadRes(_load_results(results_json, set(coco_gt.getImgIds())))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STATS, evaluator.stats)}
