"""A patient's anatomy: the few lengths that shape a chest, and the branching tree of its lung vessels.

Lengths are in anatomy coordinates ``(u, v)``, in image widths (``u`` to the image right = the patient's left, ``v``
down; sizes assume a 43 cm field of view = 1 image width).  They are drawn per patient (one build factor makes broad
chests have broad bodies and hearts), then changed by the view and the findings: AP films magnify the heart and show
a shallower inspiration, Emphysema hyperinflates (flat low domes, a narrow heart), Fibrosis loses volume and
Cardiomegaly widens the heart.  ``chest.Chest`` turns them into fields on an image's pixel grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from flexheads.data.synthetic_cxr.cohort import Study


@dataclass(frozen=True)
class Anatomy:
    """A patient's chest, lengths in image widths: midline ``cx``; ``ribcage`` inner half-width at the bases;
    ``apex`` and ``dome`` heights of the lung apices and of the right dome's peak, ``dome_depth`` from a peak down to
    its costophrenic angle; ``body`` half-width; how far the heart's left and right borders reach beyond the
    ``mediastinum`` half-width; ``aeration`` the fraction of the chest depth that mid-lung air fills; ``bone``
    density factor."""

    cx: float
    ribcage: float
    apex: float
    dome: float
    dome_depth: float
    body: float
    heart_left: float
    heart_right: float
    mediastinum: float
    aeration: float
    bone: float


def sample_anatomy(rng: np.random.Generator, study: Study) -> Anatomy:
    """A patient's anatomy, then the changes that findings and the view make to it (AP: magnified heart, shallower
    inspiration; Emphysema: hyperinflation; Fibrosis: volume loss; Cardiomegaly: a wider heart)."""
    build = rng.normal(0, 1)  # one factor for build: broad chests have broad bodies and hearts
    female = study.sex == "F"
    a = {
        "cx": 0.5 + rng.normal(0, 0.008),
        "ribcage": float(np.clip(0.35 + 0.015 * build - 0.012 * female, 0.30, 0.40)),
        "apex": 0.13 + rng.normal(0, 0.01),
        "dome": 0.60 + rng.normal(0, 0.02),
        "dome_depth": 0.065 + rng.normal(0, 0.008),
        "body": float(np.clip(0.44 + 0.025 * build + rng.normal(0, 0.015), 0.38, 0.52)),
        "heart_left": 0.14 + 0.006 * build + rng.normal(0, 0.01),  # normal cardiothoracic ratio ~0.43
        "heart_right": 0.045 + rng.normal(0, 0.006),
        "mediastinum": 0.055 + rng.normal(0, 0.003),
        "aeration": 0.66 + rng.normal(0, 0.02),
        "bone": float(np.clip(1.1 - 0.006 * max(study.age - 40, 0) + rng.normal(0, 0.08), 0.6, 1.4)),
    }
    findings = set(study.findings)
    if study.view != "PA":
        a.update(heart_left=a["heart_left"] * 1.1, heart_right=a["heart_right"] * 1.1, dome=a["dome"] - 0.025)
    if "Emphysema" in findings:
        a.update(dome=a["dome"] + 0.06, dome_depth=a["dome_depth"] * 0.4, heart_left=a["heart_left"] * 0.8,
                 aeration=a["aeration"] + 0.14, ribcage=a["ribcage"] * 1.03, apex=a["apex"] - 0.01)
    if "Fibrosis" in findings:
        a.update(dome=a["dome"] - 0.03, ribcage=a["ribcage"] * 0.96)
    if "Cardiomegaly" in findings:
        grow = rng.uniform(1.35, 1.6)  # cardiothoracic ratio ~0.55-0.6
        a.update(heart_left=a["heart_left"] * grow, heart_right=a["heart_right"] * grow)
    return Anatomy(**a)


def vessel_tree(rng: np.random.Generator, a: Anatomy,
                depth: int = 3) -> Iterator[tuple[np.ndarray, np.ndarray, float, float]]:
    """Vessel segments per level: (start (n, 2), end (n, 2), width in px at 256, density in cm), anatomy coordinates;
    seven trunks per hilum fanning up, out and down, each forking ``depth`` times."""
    starts, angles = [], []
    for side in (-1.0, 1.0):
        hilum = (a.cx + side * (a.mediastinum + 0.03), 0.41)
        for angle in np.deg2rad([-110, -75, -40, -5, 30, 65, 100]) + rng.normal(0, 0.12, 7):
            starts.append(hilum)
            angles.append(angle if side > 0 else np.pi - angle)
    start, angle = np.array(starts), np.array(angles)
    length, width, density = 0.075, 2.6, 1.8
    for _ in range(depth + 1):
        end = start + length * rng.uniform(0.8, 1.2, (len(start), 1)) * np.stack([np.cos(angle), np.sin(angle)], 1)
        yield start, end, width, density
        start = np.repeat(end, 2, axis=0)
        angle = np.repeat(angle, 2) + np.tile([-1.0, 1.0], len(end)) * rng.uniform(0.25, 0.6, 2 * len(end))
        length, width, density = length * 0.72, width * 0.7, density * 0.8
