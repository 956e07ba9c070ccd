"""3D human pose metrics (Human3.6M / MPI-INF-3DHP protocols) as pure numpy functions.

Axis layout: poses are arrays ``(..., J, 3)``: any number of leading axes (frames, samples, ...),
``J`` joints, xyz last. Units are millimetres; errors come back in millimetres (angles in
degrees, PCK/AUC as fractions in [0, 1]). Every scalar metric returns a Python ``float`` and
averages uniformly over all leading axes and joints.

Conventions follow VideoPose3D ``common/loss.py`` (Pavllo et al. 2019), written with one array
backend and explicit axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "auc3d",
    "mean_over_groups",
    "mjae",
    "mpjpe",
    "mpjpe_per_joint",
    "mpjve",
    "n_mpjpe",
    "p_mpjpe",
    "pck3d",
    "per_joint_error",
]


def _as_pose_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``pred, gt`` as float64 arrays after checking both are equal-shaped ``(..., J, 3)``."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}")
    if pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"poses must have shape (..., J, 3), got {pred.shape}")
    if pred.size == 0:
        raise ValueError(f"poses must be non-empty, got shape {pred.shape}")
    return pred, gt


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (a degenerate, all-collapsed prediction gets scale 0)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def per_joint_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distance per joint, ``||pred - gt||_2`` over the xyz axis.

    Args:
        pred, gt: ``(..., J, 3)`` in mm.
    Returns:
        ``(..., J)`` distances in mm; the building block of the other metrics.
    """
    pred, gt = _as_pose_pair(pred, gt)
    return np.linalg.norm(pred - gt, axis=-1)


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJPE, protocol 1: ``mean_{..., j} ||pred_j - gt_j||_2`` in mm, no alignment.

    Human3.6M practice passes root-relative poses (root joint subtracted from both).
    """
    return float(per_joint_error(pred, gt).mean())


def mpjpe_per_joint(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """MPJPE of each joint, averaged over all leading axes: ``(..., J, 3) -> (J,)`` in mm."""
    errors = per_joint_error(pred, gt)
    return errors.reshape(-1, errors.shape[-1]).mean(axis=0)


def mean_over_groups(values: np.ndarray, groups: np.ndarray) -> float:
    """Unweighted mean over the groups present of each group's mean: ``mean_a (sum_{n: g_n = a} v_n / N_a)``.

    Human3.6M's headline MPJPE is this with ``values`` the per-frame MPJPE ``(N,)`` (mean over joints of
    :func:`per_joint_error`) and ``groups`` the frame's action index ``(N,)`` (int >= 0): each of the 15 actions
    weighs the same, however many frames it has.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
    if values.ndim != 1 or values.shape != groups.shape or values.size == 0:
        raise ValueError(f"need values and groups of one non-empty shape (N,), got {values.shape} and {groups.shape}")
    if not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
        raise ValueError(f"groups must be non-negative integers, got dtype {groups.dtype}")
    counts = np.bincount(groups)
    present = counts > 0
    return float((np.bincount(groups, weights=values)[present] / counts[present]).mean())


def _procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Similarity-align each ``(J, 3)`` pose of ``pred`` to ``gt`` (vectorised over leading axes).

    Solves ``min_{s, R, t} ||s * pred @ R + t - gt||_F`` with ``R`` a proper rotation
    (orthogonal Procrustes via SVD, Umeyama 1991). With centred poses ``P, G`` and
    ``P^T G = U S V^T``, ``R = U D V^T`` where ``D = diag(1, 1, sign det(U V^T))``: the sign
    flip keeps ``det R = +1``, so a mirror image is *not* aligned away. ``s = tr(D S) / ||P||_F^2``.
    """
    mu_pred = pred.mean(axis=-2, keepdims=True)  # (..., 1, 3)
    mu_gt = gt.mean(axis=-2, keepdims=True)
    p = pred - mu_pred  # (..., J, 3)
    g = gt - mu_gt
    u, sigma, vt = np.linalg.svd(np.swapaxes(p, -1, -2) @ g)  # (..., 3, 3), (..., 3), (..., 3, 3)
    sign = np.sign(np.linalg.det(u @ vt))  # (...,), +1 or -1: u and vt are orthogonal
    u[..., :, -1] *= sign[..., None]  # u @ diag(1, 1, sign)
    sigma[..., -1] *= sign
    rotation = u @ vt  # (..., 3, 3), det = +1
    scale = _safe_divide(sigma.sum(axis=-1), (p**2).sum(axis=(-2, -1)))  # (...,)
    return scale[..., None, None] * (p @ rotation) + mu_gt


def p_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """P-MPJPE, protocol 2: MPJPE after per-pose similarity alignment, in mm.

    Each ``(J, 3)`` pose over the leading axes is aligned to its ground truth by the rotation
    (reflections excluded), uniform scale and translation minimising the squared error
    (orthogonal Procrustes), then ``mean ||aligned_j - gt_j||_2``.
    """
    pred, gt = _as_pose_pair(pred, gt)
    return mpjpe(_procrustes_align(pred, gt), gt)


def n_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """N-MPJPE: MPJPE after per-pose scale alignment (Rhodin et al. 2018), in mm.

    ``s = <pred, gt> / <pred, pred>`` (sums over joints and xyz of one pose), then
    ``mean ||s * pred_j - gt_j||_2``. No centring: pass root-relative poses, as on Human3.6M.
    """
    pred, gt = _as_pose_pair(pred, gt)
    scale = _safe_divide((pred * gt).sum(axis=(-2, -1)), (pred**2).sum(axis=(-2, -1)))  # (...,)
    return mpjpe(scale[..., None, None] * pred, gt)


def mpjve(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJVE: mean per-joint velocity error in mm per frame (Pavllo et al. 2019).

    Time is axis 0: ``(T, ..., J, 3)`` with ``T >= 2``.
    ``mean_{t, ..., j} ||(pred[t+1] - pred[t]) - (gt[t+1] - gt[t])||_2``; a constant offset
    between ``pred`` and ``gt`` cancels.
    """
    pred, gt = _as_pose_pair(pred, gt)
    if pred.ndim < 3 or pred.shape[0] < 2:
        raise ValueError(f"mpjve needs a sequence (T, ..., J, 3) with T >= 2, got shape {pred.shape}")
    return mpjpe(np.diff(pred, axis=0), np.diff(gt, axis=0))


def pck3d(pred: np.ndarray, gt: np.ndarray, threshold: float = 150.0) -> float:
    """3D PCK: fraction of joints with error strictly below ``threshold`` mm.

    ``mean [||pred_j - gt_j||_2 < threshold]``. Strict ``<`` as in the MPI-INF-3DHP evaluation
    code (``mpii_compute_3d_pck.m``): an error of exactly 150 mm is *not* correct at 150 mm, and
    PCK at threshold 0 is 0 even for perfect predictions.
    """
    return float((per_joint_error(pred, gt) < threshold).mean())


def auc3d(pred: np.ndarray, gt: np.ndarray, max_threshold: float = 150.0, n_thresholds: int = 31) -> float:
    """3D PCK AUC: mean of :func:`pck3d` over ``np.linspace(0, max_threshold, n_thresholds)``.

    Defaults give the MPI-INF-3DHP protocol, thresholds 0, 5, ..., 150 mm. Because PCK uses a
    strict ``<``, the threshold-0 term is always 0: a perfect prediction scores
    ``(n_thresholds - 1) / n_thresholds`` (30/31 by default), as in the reference code.
    """
    if n_thresholds < 1 or max_threshold < 0:
        raise ValueError(
            f"need n_thresholds >= 1 and max_threshold >= 0, got {n_thresholds} and {max_threshold}"
        )
    thresholds = np.linspace(0.0, max_threshold, n_thresholds)
    errors = per_joint_error(pred, gt)[..., None]  # (..., J, 1) against (n_thresholds,)
    return float((errors < thresholds).mean())


def mjae(pred: np.ndarray, gt: np.ndarray, parents: Sequence[int]) -> float:
    """Mean joint angle error in degrees: the error in bone *direction*, blind to bone length.

    For each joint ``j`` with ``parents[j] = p >= 0`` the bone is ``b_j = X_j - X_p``; the error
    is ``arccos(clip(<b_pred, b_gt> / (|b_pred| |b_gt|), -1, 1))``, averaged over bones and all
    leading axes. ``parents`` has length ``J``; roots have ``-1``. A zero-length bone has no
    direction and counts as cosine 0 (90 degrees).
    """
    pred, gt = _as_pose_pair(pred, gt)
    n_joints = pred.shape[-2]
    parents = np.asarray(parents, dtype=np.int64)
    if parents.shape != (n_joints,):
        raise ValueError(f"parents must have length J={n_joints}, got shape {parents.shape}")
    if np.any((parents < -1) | (parents >= n_joints)):
        raise ValueError(
            f"parents must be -1 (root) or a joint index in [0, {n_joints}), got {parents.tolist()}"
        )
    children = np.flatnonzero(parents >= 0)
    if children.size == 0:
        raise ValueError("parents defines no bones (every joint is a root)")
    bone_pred = pred[..., children, :] - pred[..., parents[children], :]  # (..., B, 3)
    bone_gt = gt[..., children, :] - gt[..., parents[children], :]
    lengths = np.linalg.norm(bone_pred, axis=-1) * np.linalg.norm(bone_gt, axis=-1)
    cosine = _safe_divide((bone_pred * bone_gt).sum(axis=-1), lengths)
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))).mean())
