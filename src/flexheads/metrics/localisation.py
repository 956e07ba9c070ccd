"""Weakly supervised localisation metrics for saliency maps (e.g. Grad-CAM) as pure numpy functions.

Axis layout: ``heatmaps`` are ``(N, H, W)`` real (larger = more salient; any scale), ``masks`` are ``(N, H, W)``
bool (the annotated lesion, e.g. a filled ChestX-ray14 bounding box), on the same pixel grid. Distances and
tolerances are in pixels of that grid; scores come back per sample as fractions in [0, 1], to be averaged by
the caller (over samples, or per finding). Every mask must hold at least one pixel: select the samples with an
annotated lesion first.

Baselines (:func:`baseline_heatmaps`): a *uniform* map has every pixel tied for the maximum, so its pointing-game
score is the mask's area fraction, the hit rate of a point dropped uniformly at random; a *center* map peaks at
the image centre, the prior of a detector that knows only that findings sit mid-image. A saliency map is
informative about location only where it beats both.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["baseline_heatmaps", "cam_iou", "pointing_game"]


def _as_maps_and_masks(heatmaps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``heatmaps`` as float64 and ``masks`` as bool after checking shapes ``(N, H, W)`` and non-empty masks."""
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    masks = np.asarray(masks)
    if heatmaps.ndim != 3 or heatmaps.shape != masks.shape:
        raise ValueError(f"need heatmaps and masks of one shape (N, H, W), got {heatmaps.shape} and {masks.shape}")
    if masks.dtype != bool:
        raise ValueError(f"masks must be bool, got dtype {masks.dtype}")
    if not np.isfinite(heatmaps).all():
        raise ValueError("heatmaps must be finite")
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        raise ValueError(f"masks of samples {empty[:10].tolist()} are empty; score only samples with a lesion")
    return heatmaps, masks


def pointing_game(heatmaps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop", ECCV): does the map's
    maximum fall on the lesion? Returns ``(N,)`` hits in [0, 1].

    A pixel counts as on the lesion when its Euclidean distance to the nearest mask pixel is ``<= tolerance``.
    Ties are scored by their expectation under random tie-breaking: a sample scores the fraction of its maximal
    pixels that are on the lesion (1 or 0 for a unique maximum), so a constant map scores exactly the area
    fraction of the (tolerance-dilated) mask, the uniform baseline, instead of an artefact of scan order.

    Tolerance: Zhang et al. allow 15 px on full-resolution images (about 3 % of a 500 px side). The default 0
    asks for the maximum inside the mask itself, the strict reading that suits small images; to reproduce the
    original protocol at side ``S`` pass ``tolerance = 0.03 * S``.
    """
    heatmaps, masks = _as_maps_and_masks(heatmaps, masks)
    if tolerance < 0:
        raise ValueError(f"tolerance is a distance in pixels, got {tolerance}")
    peaks = heatmaps == heatmaps.max(axis=(1, 2), keepdims=True)  # (N, H, W), the tied maxima
    return (peaks & _dilate(masks, tolerance)).sum(axis=(1, 2)) / peaks.sum(axis=(1, 2))


def _dilate(masks: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` of a mask pixel: the OR of the masks shifted by every offset
    ``(dy, dx)`` with ``dy^2 + dx^2 <= radius^2``."""
    r = int(radius)
    _, h, w = masks.shape
    padded = np.pad(masks, ((0, 0), (r, r), (r, r)))
    dilated = np.zeros_like(masks)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                dilated |= padded[:, r + dy : r + dy + h, r + dx : r + dx + w]
    return dilated


def cam_iou(heatmaps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """IoU of each map's salient region with the lesion, ``(N,)`` in [0, 1].

    The salient region is ``B = {heatmap >= threshold * max(heatmap)}`` (per map, relative to its own maximum, as
    Grad-CAM boxes are drawn at 0.5 of the peak; maps are assumed non-negative, as Grad-CAM's are), and
    ``IoU = |B ∩ mask| / |B ∪ mask|``. An all-zero map selects every pixel: its IoU is the mask's area fraction.
    """
    heatmaps, masks = _as_maps_and_masks(heatmaps, masks)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of each map's maximum in [0, 1], got {threshold}")
    salient = heatmaps >= threshold * heatmaps.max(axis=(1, 2), keepdims=True)
    intersection = (salient & masks).sum(axis=(1, 2))
    union = (salient | masks).sum(axis=(1, 2))  # >= 1: masks are non-empty
    return intersection / union


def baseline_heatmaps(kind: Literal["uniform", "center"], shape: tuple[int, int, int]) -> np.ndarray:
    """Reference maps ``(N, H, W)`` in [0, 1] to score with the same metrics as a saliency map.

    ``uniform``: all ones (see the module docstring). ``center``: ``1 - d / d_max`` with ``d`` the distance of a
    pixel centre to the image centre ``((H - 1) / 2, (W - 1) / 2)`` and ``d_max`` that of a corner: the maximum is
    the centre pixel, or the 2 or 4 pixels around the centre of an even-sized image (tied, see
    :func:`pointing_game`).
    """
    _, h, w = shape
    if kind == "uniform":
        return np.ones(shape)
    if kind != "center":
        raise ValueError(f"kind must be 'uniform' or 'center', got {kind!r}")
    rows, cols = np.mgrid[:h, :w]
    distance = np.hypot(rows - (h - 1) / 2, cols - (w - 1) / 2)
    return np.broadcast_to(1 - distance / max(distance.max(), 1e-12), shape).copy()
