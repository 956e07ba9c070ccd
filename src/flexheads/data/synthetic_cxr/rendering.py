"""A radiograph of a study with its lesion masks (``render``): the chest's fields summed, exposed and upsampled.

Pixel value = ``1 - exp(-mu D)`` of the attenuation ``D`` summed along the ray (``chest.Chest`` plus the edits of
``findings``), windowed with a per-image exposure and gamma, blurred, plus quantum and low-frequency noise; AP films
(portable, of sicker patients) are softer and noisier, with a magnified heart, a shallower inspiration and the
scapulae over the lungs.  Lungs come out dark, the mediastinum, heart, diaphragm and bones bright, as on a real
radiograph.  The fields are computed on a grid of half the image size from 128 px up and upsampled (the cost is per
pixel: ~10 ms an image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from flexheads.data.cxr import LABELS
from flexheads.data.synthetic_cxr.anatomy import sample_anatomy
from flexheads.data.synthetic_cxr.chest import Chest, noise
from flexheads.data.synthetic_cxr.cohort import Study
from flexheads.data.synthetic_cxr.findings import FINDINGS, IN_BODY

_SOURCE_CODE = {"nih": 0, "covid": 1}


@dataclass(frozen=True, eq=False)
class Rendering:
    """``image`` uint8 ``(S, S)``; ``masks`` bool ``(S, S)`` per finding of the study; ``body`` and ``lungs`` bool
    ``(S, S)``: the patient's outline and the lung fields (the hemithoraces above the domes) of this image."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    body: np.ndarray
    lungs: np.ndarray


def render(study: Study, size: int, seed: int) -> Rendering:
    """Draw ``study`` at ``size`` x ``size`` (see the module docstring); a function of (seed, study, size).

    Anatomy, findings and exposure are computed on a grid of ``size // 2`` from 128 px up (the cost is per pixel),
    then upsampled to ``size``, bicubically for the image (before its noise) and by nearest neighbour for the masks.
    Random streams: the patient's anatomy and vessel tree from (seed, source, patient); a lesion's geometry from
    that and its finding (it stays in place on follow-ups); the image's positioning, exposure and noise from the
    image, and each finding's texture from the image and the finding, so adding a finding leaves every other draw
    as it was.
    """
    work = size // 2 if size >= 128 else size
    key = [seed, _SOURCE_CODE[study.source], study.patient]
    image_key = [*key, 100 + study.follow_up]
    rng = np.random.default_rng(image_key)
    chest = Chest(sample_anatomy(np.random.default_rng(key), study), work, rng)
    lungs = chest.field.copy()
    masks = {}
    for finding, draw in FINDINGS.items():
        if finding in study.findings:
            k = LABELS.index(finding)
            mask = draw(chest, np.random.default_rng([*key, 1000 + k]), np.random.default_rng([*image_key, k]))
            masks[finding] = mask & chest.body if finding in IN_BODY else mask & lungs
    density = (chest.tissue + chest.bones(study.view) + chest.soft_tissue(study) + chest.extra - chest.air
               + chest.vessel_gain * chest.vessels(np.random.default_rng([*key, 99]))
               - chest.air_structures(gastric=rng.random() < 0.7)) * chest.body
    return Rendering(_expose(density, rng, study.view, size), {f: _resize(masks[f], size) for f in study.findings},
                     _resize(chest.body, size), _resize(lungs, size))


def _resize(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask resized to ``size`` x ``size`` by nearest neighbour."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def _expose(density: np.ndarray, rng: np.random.Generator, view: str, size: int) -> np.ndarray:
    """Attenuation (cm) → uint8 pixels at ``size``: ``1 - exp(-mu D)``, an exposure window and gamma-like contrast,
    blur, low-frequency and quantum noise (grainy at the working grid's scale, as detector noise is correlated),
    then bicubic upsampling; AP films (portable) come out softer and noisier."""
    work = density.shape[0]
    signal = 1 - np.exp(-0.075 * np.clip(density, 0, None))
    low, high = rng.normal(0.12, 0.02), rng.normal(0.88, 0.02)
    x = np.clip((signal - low) / (high - low), 0, 1)
    x = x * (1 + rng.uniform(-0.2, 0.2) * (1 - x))
    x = ndimage.gaussian_filter(x, (0.5 if view == "PA" else 0.8) * work / 256, mode="nearest")
    quantum = rng.uniform(0.006, 0.014) * (1.4 if view != "PA" else 1.0)
    x = x + 0.015 * noise(rng, work, 6) + quantum * np.sqrt(x + 0.05) * rng.standard_normal(x.shape, np.float32)
    if work != size:
        x = np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BICUBIC))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
