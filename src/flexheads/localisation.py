"""Does the cxr ViT look at the lesion? Grad-CAM maps (:mod:`flexheads.explain`) of every true finding with a lesion
mask, scored against the mask.

* :func:`lesion_pairs`: the (image, finding) pairs to explain, unpacked from the masks' finding bits;
* :func:`localisation`: their Grad-CAM maps, the pointing game and IoU (``flexheads.metrics.localisation``) against
  a uniform map's, per finding, and the maps of a few images for the report's overlays.

Grad-CAM (``pytorch-grad-cam``, with opencv) is imported only when maps are drawn, i.e. on data with masks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from flexheads.data.cxr import LABELS
from flexheads.metrics import localisation as localisation_metrics
from flexheads.models.vit import VisionTransformer

GRADCAM_FIGURE_IMAGES = 8  # test images (the first with a lesion mask) whose Grad-CAM maps evaluate keeps


def lesion_pairs(labels: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (image, finding) with a positive label and a non-empty lesion mask: ``(rows, findings, masks)``.

    ``labels`` uint8 ``(N, 15)`` in ``LABELS`` order and ``masks`` uint16 ``(N, S, S)`` with bit k set where
    finding ``LABELS[k]`` is (as cxr.h5 stores them); the masks returned are bool ``(P, S, S)``, one per pair.
    """
    bits = (masks[:, None] >> np.arange(len(LABELS), dtype=np.uint16)[None, :, None, None]) & 1  # (N, 15, S, S)
    present = (labels > 0) & bits.any(axis=(2, 3))
    rows, findings = np.nonzero(present)
    return rows, findings, bits[rows, findings].astype(bool)


def localisation(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                 batch_size: int, device: torch.device, as_input: Callable[[np.ndarray], torch.Tensor],
                 ) -> tuple[dict[str, float], pd.DataFrame, dict[str, np.ndarray]]:
    """Grad-CAM of every true finding that has a lesion mask (:func:`lesion_pairs`), scored against the mask.

    ``images`` are the uint8 radiographs ``(N, S, S)`` and ``as_input`` turns a selection of them into the
    model's input.  Returns the headline (``pointing_game``, its ``pointing_game_uniform`` reference (a uniform
    map hits with the mask's area fraction), ``cam_iou`` at half of each map's peak, ``lesions``), a per-finding
    table, and the maps of the lesions of the first ``GRADCAM_FIGURE_IMAGES`` masked images for the report's
    overlays (``images``, ``maps``, ``masks``, ``findings``).  The maps are computed in float32 on every device
    (autocast off, as in all of evaluation).
    """
    from flexheads.explain import gradcam_maps  # grad-cam (opencv) only where maps are drawn

    rows, findings, lesion_masks = lesion_pairs(labels, masks)
    model.to(device)
    with torch.autocast(device.type, enabled=False):  # evaluation runs in float32 on every device
        maps = gradcam_maps(model, as_input(images[rows]).to(device), findings, batch_size)
    hits = localisation_metrics.pointing_game(maps, lesion_masks)
    uniform = localisation_metrics.pointing_game(
        localisation_metrics.baseline_heatmaps("uniform", maps.shape), lesion_masks)
    iou = localisation_metrics.cam_iou(maps, lesion_masks)
    pairs = pd.DataFrame({"finding": np.asarray(LABELS)[findings], "pointing_game": hits,
                          "pointing_game_uniform": uniform, "cam_iou": iou})
    table = pairs.groupby("finding", sort=False).agg(
        pointing_game=("pointing_game", "mean"), pointing_game_uniform=("pointing_game_uniform", "mean"),
        cam_iou=("cam_iou", "mean"), lesions=("cam_iou", "size"),
    )
    shown = np.isin(rows, np.unique(rows)[:GRADCAM_FIGURE_IMAGES])
    figure = {"images": images[rows[shown]], "maps": maps[shown].astype(np.float32), "masks": lesion_masks[shown],
              "findings": np.asarray(LABELS)[findings[shown]].astype(str)}
    headline = {"pointing_game": float(hits.mean()), "pointing_game_uniform": float(uniform.mean()),
                "cam_iou": float(iou.mean()), "lesions": int(len(rows))}
    return headline, table.reset_index(), figure
