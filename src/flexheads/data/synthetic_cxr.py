"""Procedural chest radiographs with known lesion masks, written in the on-disk layouts of NIH ChestX-ray14 and of the
covid-chestxray-dataset, so the real-data readers of ``flexheads.data.cxr`` are the embedded default's code path.

Writes, under ``out_dir`` (``generate``; emptied first):

* ``chestxray14/``: ``images/<patient:08d>_<follow-up:03d>.png`` (8-bit grayscale), ``Data_Entry_2017_v2020.csv``,
  ``train_val_list.txt`` and ``test_list.txt`` (patient-disjoint, ~22% of the images and of the patients with each
  finding in test, as NIH's split),
  ``BBox_List_2017.csv`` (the box of each test-image mask of NIH's eight box findings, NIH's ``Infiltrate`` spelling)
  and ``masks/<stem>.npz``;
* ``covid-chestxray-dataset/``: ``metadata.csv`` (the repository's columns), ``images/*.jpg`` and ``masks/<stem>.npz``.

A mask file holds one boolean ``(S, S)`` array per finding on the image, keyed by its label; it is synthetic-only
ground truth (the real sources have none), empty for "No Finding".

Cohort (``sample_cohort``): ``n_patients`` ChestX-ray14 patients with 1-4 images each (follow-up 0, 1, ...) and
``n_covid_images`` COVID-19 images from patients with 1-3 images. Findings are drawn per image in a fixed order, each
with a base rate raised by the findings already drawn (``_CO_OCCURRENCE``: effusion with cardiomegaly, edema and
pneumonia; nodule with mass; infiltration with pneumonia, edema and effusion; ...), tuned so the marginals follow
NIH's per-image prevalences (Infiltration ~18% ... Hernia, raised from NIH's 0.2% to ~0.5% so that it exists at the
default size) with ~50% "No Finding". A follow-up keeps the chronic findings of the previous image with probability
0.8, and a lesion sits at the same place on every image of a patient (its geometry is seeded by patient and finding).
AP views are more likely on images with acute findings, as portable films are in practice.

Image model (``render``): every structure is a line integral of attenuation along the x-ray, in centimetres of
water, over anatomy coordinates ``(u, v)`` in image widths (``u`` to the image right = the patient's left, ``v``
down); the pixel grid samples them through a per-image rotation, scale and shift (positioning).  Soft tissue is a
body of elliptical cross-section (neck, shoulders, chest wall); the lungs replace tissue by air, most in the middle of
each hemithorax, thinning to the chest wall, the mediastinum, the apex and the diaphragm domes (the right dome higher,
sharp costophrenic angles laterally); the heart, whose left border (the left ventricle) bulges most low down and
whose right border (the right atrium) bulges at mid-height, displaces most of the lung in front of and behind it;
the trachea, the main bronchi and a gastric bubble under the left dome are air.  Bones add attenuation: a spine of
vertebrae with pedicles and discs, ten curved posterior ribs and fainter anterior ribs per side with bright cortices,
clavicles, scapulae (over the lungs on AP films) and humeral heads; lung vessels are a branching tree from each
hilum, fading to the periphery; women have breast shadows over the lung bases.  Pixel value = ``1 - exp(-mu D)``,
windowed with a per-image exposure and gamma, blurred, plus quantum and low-frequency noise; AP films (portable, of
sicker patients) are softer and noisier, with a magnified heart, a shallower inspiration and the scapulae over the
lungs.  Lungs come out dark, the mediastinum, heart, diaphragm and bones bright, as on a real radiograph.  The fields
are computed on a grid of half the image size from 128 px up and upsampled (the cost is per pixel: ~10 ms an image).

Findings (``_FINDINGS``), each changing the densities where its mask is (the masks are cut to the lung fields except
Cardiomegaly and Hernia, which lie in the body): Atelectasis a plate-like band or a wedge from the hilum;
Cardiomegaly heart borders reaching 1.35-1.6x as far (cardiothoracic ratio ~0.55-0.6; mask = the enlarged heart);
Effusion fluid at a lung base with a meniscus, higher laterally, blunting the costophrenic angle; Infiltration
patchy ill-defined airspace opacity; Mass a lobulated sphere 3-6 cm across, Nodule 1-3 spheres of 1.5-2.8 cm (some
calcified); Pneumonia lobar consolidation (an upper lobe
bounded by the fissure, the middle lobe or a lower lobe) with air bronchograms; Pneumothorax apical-lateral air
without lung markings outside a visible pleural line; Consolidation a dense segmental opacity with air bronchograms;
Edema bilateral perihilar (bat-wing) haze with Kerley B lines; Emphysema large hyperlucent lungs, flat low domes, a
narrow heart and pruned peripheral vessels (mask = the lungs); Fibrosis reticular lines in the peripheral lower zones
with volume loss; Pleural_Thickening a band along the lateral chest wall or an apical cap; Hernia a retrocardiac
rounded opacity with an air-fluid level; COVID-19 bilateral peripheral lower-zone ground glass (vessels stay
visible).  Sizes assume a 43 cm field of view (1 image width).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm.auto import tqdm

from flexheads.data.cxr import (
    BBOX_LABELS, COVID_DIR, COVID_IMAGES_DIR, COVID_METADATA, COVID_METADATA_COLUMNS, LABELS, MASKS_DIR, NIH_BBOX_CSV,
    NIH_COLUMNS_2020, NIH_CSV, NIH_DIR, NIH_IMAGES_DIR, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST,
)
from flexheads.io import atomic_path, empty_output_folder

__all__ = ["Rendering", "Study", "generate", "render", "sample_cohort"]

TEST_IMAGE_FRACTION = 0.22  # NIH's test_list.txt holds 25,596 of 112,120 images (22.8%)
FIELD_OF_VIEW_MM = 430.0  # one image width; sets the pixel spacing written to the CSV
_SOURCE_CODE = {"nih": 0, "covid": 1}

# Per-image base rates before co-occurrence; with it the marginals land near NIH's (see the module docstring).
_BASE_RATE = {
    "Cardiomegaly": 0.016, "Emphysema": 0.0145, "Fibrosis": 0.009, "Hernia": 0.0045, "Mass": 0.033,
    "Pleural_Thickening": 0.019, "Pneumothorax": 0.048, "Pneumonia": 0.013, "Edema": 0.020, "Consolidation": 0.039,
    "Effusion": 0.094, "Nodule": 0.030, "Atelectasis": 0.072, "Infiltration": 0.137,
}  # fmt: skip
# finding → {finding drawn before it: probability that the earlier one adds}, applied as 1 - prod(1 - p).
_CO_OCCURRENCE = {
    "Consolidation": {"Pneumonia": 0.25},
    "Effusion": {"Cardiomegaly": 0.35, "Edema": 0.40, "Pneumonia": 0.15, "Mass": 0.10},
    "Nodule": {"Mass": 0.25},
    "Atelectasis": {"Effusion": 0.25, "Pneumothorax": 0.10, "Mass": 0.10},
    "Infiltration": {"Pneumonia": 0.35, "Edema": 0.20, "Consolidation": 0.20, "Effusion": 0.15, "Atelectasis": 0.15},
}
_CHRONIC = ("Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Mass", "Nodule", "Pleural_Thickening")
_ACUTE = ("Edema", "Effusion", "Consolidation", "Pneumothorax", "Pneumonia", "Infiltration")
_KEEP_CHRONIC = 0.8
_IMAGES_PER_PATIENT = (0.45, 0.25, 0.17, 0.13)  # 1, 2, 3, 4 images
_COVID_VIEWS = (("PA", 0.45), ("AP", 0.35), ("AP Supine", 0.20))


@dataclass(frozen=True)
class Study:
    """One radiograph to render: who, which view, which findings (a subset of ``LABELS``)."""

    source: str  # "nih" | "covid"
    patient: int
    follow_up: int
    age: int
    sex: str  # "M" | "F"
    view: str  # "PA" | "AP" | "AP Supine"
    findings: tuple[str, ...]

    @property
    def file_name(self) -> str:
        if self.source == "nih":
            return f"{self.patient:08d}_{self.follow_up:03d}.png"
        return f"synthetic-covid-{self.patient:04d}-{self.follow_up}.jpg"


@dataclass(frozen=True, eq=False)
class Rendering:
    """``image`` uint8 ``(S, S)``; ``masks`` bool ``(S, S)`` per finding of the study; ``body`` and ``lungs`` bool
    ``(S, S)``: the patient's outline and the lung fields (the hemithoraces above the domes) of this image."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    body: np.ndarray
    lungs: np.ndarray


# --- cohort ---------------------------------------------------------------------------------------------------


def sample_cohort(n_patients: int, n_covid_images: int, seed: int) -> list[Study]:
    """The studies of the ChestX-ray14 patients (ids 1..n_patients) then of the COVID-19 images (see the module
    docstring); a function of ``seed`` alone, cheap (no pixels)."""
    rng = np.random.default_rng([seed, 7])
    studies = []
    for patient in range(1, n_patients + 1):
        age, sex = int(np.clip(rng.normal(47, 17), 1, 95)), "M" if rng.random() < 0.56 else "F"
        findings: tuple[str, ...] = ()
        for follow_up in range(rng.choice(4, p=_IMAGES_PER_PATIENT) + 1):
            kept = {f for f in findings if f in _CHRONIC and rng.random() < _KEEP_CHRONIC}
            findings = _sample_findings(rng, kept)
            acute = any(f in _ACUTE for f in findings)
            view = "AP" if rng.random() < (0.55 if acute else 0.3) else "PA"
            studies.append(Study("nih", patient, follow_up, min(age + follow_up // 2, 95), sex, view, findings))
    covid = patient = 0
    while covid < n_covid_images:
        patient += 1
        age, sex = int(np.clip(rng.normal(56, 15), 18, 95)), "M" if rng.random() < 0.6 else "F"
        for follow_up in range(min(n_covid_images - covid, rng.integers(1, 4))):
            view = _COVID_VIEWS[rng.choice(3, p=[p for _, p in _COVID_VIEWS])][0]
            studies.append(Study("covid", patient, follow_up, age, sex, view, ("COVID-19",)))
            covid += 1
    return studies


def _sample_findings(rng: np.random.Generator, kept: set[str]) -> tuple[str, ...]:
    """Findings of one ChestX-ray14 image in ``LABELS`` order: base rates in ``_BASE_RATE`` order, each raised by
    ``_CO_OCCURRENCE`` with the findings drawn before it; ``kept`` are present regardless."""
    present = set(kept)
    for finding, base in _BASE_RATE.items():
        miss = 1.0 - base
        for other, boost in _CO_OCCURRENCE.get(finding, {}).items():
            if other in present:
                miss *= 1.0 - boost
        if rng.random() > miss:
            present.add(finding)
    return tuple(label for label in LABELS if label in present)


# --- anatomy --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
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


def _anatomy(rng: np.random.Generator, study: Study) -> _Anatomy:
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
    return _Anatomy(**a)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, ``3x² - 2x³`` between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _on(mask: np.ndarray) -> np.ndarray:
    """A bool mask as float32 (a bool array times a Python float would be float64)."""
    return mask.astype(np.float32)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field ``(size, size)`` of about unit variance with ``cells`` blobs across (bicubic)."""
    field = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32))
    return np.asarray(field.resize((size, size), Image.Resampling.BICUBIC)) * np.float32(1.6)


class _Chest:
    """One image on its pixel grid: anatomy coordinates and the fields the findings edit.

    ``air`` (cm of aerated lung along the ray, subtracted), ``extra`` (cm of added attenuation) and ``vessel_gain``
    (visibility of lung markings) start from the normal anatomy; ``render`` sums them with tissue and bone.  All
    fields are float32 ``(S, S)``; costly ufuncs (pow, log, mod, hypot, where) are avoided on the full grid.
    """

    def __init__(self, anatomy: _Anatomy, size: int, rng: np.random.Generator) -> None:
        self.a, self.size = anatomy, size
        angle, scale = np.deg2rad(rng.normal(0, 2.0)), 1 + rng.normal(0, 0.04)
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        self.linear = np.array([[cos, -sin], [sin, cos]])  # pixel (u, v) → anatomy (u, v), about the centre
        self.offset = 0.5 - self.linear @ [0.5, 0.5] + rng.normal(0, 0.02, 2)
        pix = (np.arange(size, dtype=np.float32) + 0.5) / size
        pu, pv = np.meshgrid(pix, pix)
        l, o = self.linear.astype(np.float32), self.offset.astype(np.float32)
        self.u, self.v = l[0, 0] * pu + l[0, 1] * pv + o[0], l[1, 0] * pu + l[1, 1] * pv + o[1]
        self.left = self.u >= anatomy.cx  # the patient's left, on the image right
        self.side = _on(self.left) * 2 - 1
        self.lat = np.abs(self.u - anatomy.cx)
        self.tissue, self.body = self._body()
        self.lateral = self.lateral_at(self.v)
        self.medial = self.medial_at(self.v, self.side)
        self.diaphragm = self.dome_at(self.lat, self.side)
        self.field = (self.lat > self.medial) & (self.lat < self.lateral) & (self.v < self.diaphragm)
        self.fx = np.clip((self.lat - self.medial) / np.maximum(self.lateral - self.medial, 1e-3), 0, 1)
        self.fv = np.clip((self.v - anatomy.apex) / (self.diaphragm - anatomy.apex), 0, 1)
        self.heart_region, self.heart = self._heart()
        self.air = self._air()
        self.extra = np.zeros_like(self.u)
        self.vessel_gain = np.ones_like(self.u)

    # geometry: on arrays, or on scalars for placing lesions
    def lateral_at(self, v: np.ndarray) -> np.ndarray:
        """Inner ribcage half-width at height ``v``: a rounded apex cap, widening to ``ribcage`` at the bases."""
        a = self.a
        cap = np.clip((v - a.apex) / 0.09, 0, 1)
        widen = np.clip((v - a.apex) / (a.dome + a.dome_depth - a.apex), 0, 1)
        return a.ribcage * (0.62 + 0.38 * widen) * np.sqrt(cap * (2 - cap))

    def medial_at(self, v: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Mediastinal half-width: narrow above the clavicles, wider below, the aortic knob on the left."""
        a = self.a
        knob = 0.022 * np.exp(-(((v - 0.29) / 0.03) ** 2)) * (side > 0)
        return a.mediastinum - 0.018 * np.clip((0.25 - v) / 0.08, 0, 1) + knob

    def dome_at(self, lat: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Height of the diaphragm: its peak at 45% of the ribcage, the costophrenic angle at the ribcage, the
        cardiophrenic angle medially; the left dome (side +1) 0.025 lower."""
        a = self.a
        peak = 0.45 * a.ribcage
        outer = np.clip(lat - peak, 0, None) / (a.ribcage - peak)
        inner = np.clip(peak - lat, 0, None) / peak
        return a.dome + 0.0125 * (side + 1) + a.dome_depth * (outer * outer + 0.3 * inner * inner)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Anatomy coordinates ``(..., 2)`` → pixel coordinates (for drawing with PIL)."""
        return (np.asarray(points) - self.offset) @ np.linalg.inv(self.linear).T * self.size

    def lung_point(self, rng: np.random.Generator, side: float, fx: tuple[float, float],
                   fv: tuple[float, float]) -> tuple[float, float]:
        """A point of a lung at fractions ``fx`` across (mediastinum → chest wall) and ``fv`` down (apex → dome)."""
        a = self.a
        v = a.apex + rng.uniform(*fv) * (a.dome + 0.0125 * (side + 1) - a.apex)
        medial = self.medial_at(v, side)
        lat = medial + rng.uniform(*fx) * (self.lateral_at(v) - medial)
        return a.cx + side * float(lat), float(v)

    def distance(self, centre: tuple[float, float], radius: float) -> np.ndarray:
        """Distance from ``centre`` in units of ``radius``."""
        du, dv = self.u - centre[0], self.v - centre[1]
        return np.sqrt(du * du + dv * dv) / radius

    # fields
    def _body(self) -> tuple[np.ndarray, np.ndarray]:
        """Soft-tissue thickness (cm) of the neck, the sloping shoulders and the chest, and the body outline."""
        a, v, lat = self.a, self.v, self.lat
        half = np.interp(v, [0.0, 0.04, 0.17, 0.35, 1.0], [0.09, 0.11, a.body + 0.04, a.body, a.body * 0.95])
        half = half.astype(np.float32)
        depth = 21.0 * (0.55 + 0.45 * _smoothstep((v - 0.05) / 0.2))
        r = lat / half
        return depth * np.sqrt(np.sqrt(np.clip(1 - r * r, 0, 1))), r < 1

    def _heart(self) -> tuple[np.ndarray, np.ndarray]:
        """The heart: its region (between the hilum and the domes, inside its borders) and its occupancy in [0, 1],
        edges sharp against the lung. The left border (the left ventricle) bulges most low down, near the apex on
        the left dome; the right border (the right atrium) bulges mid-height and meets the right dome."""
        a, v = self.a, self.v
        t_left = np.clip((v - 0.36) / (a.dome + 0.045 - 0.36), 0, 1)
        t_right = np.clip((v - 0.43) / (a.dome + 0.01 - 0.43), 0, 1)
        left = np.sin(np.minimum(t_left / 0.8, 1) * (np.pi / 2))  # from the concave "waist" under the knob
        right = np.sqrt(np.clip(np.sin(np.pi * t_right), 0, 1))
        border = self.medial_at(v, self.side) + np.where(self.left, a.heart_left * left, a.heart_right * right)
        occupancy = _smoothstep((border - self.lat) / 0.008) * (v > 0.36)
        return occupancy > 0.5, occupancy

    def _air(self) -> np.ndarray:
        """Air along the ray: ``aeration`` of the body depth mid-lung, thinning toward every lung border, less over
        the hila and behind the heart."""
        a = self.a
        across = np.sqrt(np.sqrt(np.clip(4 * self.fx * (1 - self.fx), 0, 1)))
        top = np.sqrt(np.clip((self.v - a.apex) / 0.05, 0, 1))
        bottom = np.sqrt(np.clip((self.diaphragm - self.v) / 0.02, 0, 1))
        dx, dv = (self.lat - self.medial - 0.02) / 0.025, (self.v - 0.41) / 0.05
        hilum = np.exp(-(dx * dx + dv * dv))
        air = (a.aeration * self.tissue) * across * top * bottom * self.field
        return air * (1 - 0.8 * self.heart) * (1 - 0.35 * hilum)

    def bones(self, view: str) -> np.ndarray:
        """Spine, ribs, clavicles, scapulae and humeral heads (cm of water-equivalent attenuation)."""
        a, v, lat = self.a, self.v, self.lat
        # Spine: vertebral bodies between darker discs, with paired pedicles; faint through the mediastinum.
        level = (v - 0.02) / 0.046
        phase = level - np.floor(level)
        dp, dq = (lat - 0.021) / 0.006, (phase - 0.45) / 0.18
        density = (1.0 + 0.8 * _on(phase > 0.12) + 1.2 * _on(dp * dp + dq * dq < 1)) * (lat < 0.033)
        # Posterior ribs: one arched shape shifted down, the spacing growing with depth (rib k starts at
        # k + g k²/2 spacings), read off the inverse map; only faintly below the domes.
        t = lat / a.ribcage
        tc = np.clip(t, 0, 1)
        arch = (0.09 * t * t * t - 0.03 * np.sin(2.7 * tc)) * (1 + 0.8 * (v - a.apex))
        y = np.clip((v - arch - a.apex + 0.035) / 0.05, 0, None)
        s = (np.sqrt(1 + 0.3 * y) - 1) / 0.15
        d = (s - np.floor(s)) / 0.48  # across one rib: 0 at its upper cortex, 1 at its lower one
        posterior = (d < 1) & (s > 0) & (s < 10) & (t > 0.06) & (t < 1.03)
        cortex = 1 + 0.5 * _on((d < 0.15) | (d > 0.85))
        below = np.clip((v - self.diaphragm) / 0.08, 0, 1)
        density += cortex * _smoothstep((t - 0.06) / 0.1) * (1 - 0.7 * below) * posterior
        # Anterior ribs: fainter, running down and in from the chest wall, invisible medially (cartilage).
        inward = np.clip(1 - t, 0, 1)
        ya = (v - 0.16 * inward * np.sqrt(inward) - a.apex - 0.01) / 0.062
        anterior = (ya > 0) & (ya < 7) & (ya - np.floor(ya) < 0.32) & (t < 1.0)
        density += 0.6 * _smoothstep((t - 0.3) / 0.25) * anterior
        # Clavicles: gently S-shaped, rising laterally from the sternal notch.
        clavicle = a.apex + 0.025 - 0.05 * lat / 0.36 + 0.012 * np.sin(17.45 * lat)
        dc = np.abs(v - clavicle) / 0.012
        density += (1.6 + dc * dc * dc * dc) * ((dc < 1) & (lat > 0.025) & (lat < 0.37))
        # Scapulae: over the lateral upper lungs on AP films, mostly rotated out of them on PA films.
        border = (0.31 if view == "PA" else 0.23) - 0.06 * np.clip((v - 0.15) / 0.3, 0, 1)
        scapula = (lat > border) & (v > 0.13) & (v < 0.46 - 2 * (lat - border)) & (lat < a.body)
        density += (1.0 + 0.8 * _on(lat - border < 0.006)) * scapula
        # Humeral heads at the shoulders.
        rh = self.distance((a.cx + a.body + 0.035, 0.17), 0.065)
        rh = np.minimum(rh, self.distance((a.cx - a.body - 0.035, 0.17), 0.065))
        density += (3.0 + 1.5 * rh * rh * rh) * (rh < 1)
        return a.bone * density

    def vessels(self, rng: np.random.Generator) -> np.ndarray:
        """Pulmonary vessels: a branching tree from each hilum, drawn with PIL and blurred, fading toward the chest
        wall and visible only where there is lung (``rng`` fixes the tree: one per patient)."""
        canvas = Image.new("F", (self.size, self.size), 0.0)
        draw = ImageDraw.Draw(canvas)
        scale = self.size / 256
        for start, end, width, density in _tree(rng, self.a):
            w = max(1, round(width * scale))
            for (x0, y0), (x1, y1) in self.to_pixels(np.stack([start, end], 1)).tolist():
                draw.line([(x0, y0), (x1, y1)], fill=density, width=w)
        vessels = ndimage.gaussian_filter(np.asarray(canvas), 0.7 * scale, mode="nearest")
        return vessels * np.clip(1.2 - self.fx, 0, 1) * np.clip(self.air / 4, 0, 1)

    def soft_tissue(self, study: Study) -> np.ndarray:
        """Breast shadows over the lung bases of adult women, densest toward their sharp lower contour."""
        if study.sex != "F" or study.age < 15:
            return np.zeros_like(self.u)
        centre = self.a.dome + 0.02
        du, dv = (self.lat - 0.24) / 0.17, (self.v - centre) / 0.13
        r = np.sqrt(du * du + dv * dv)
        return 1.5 * _smoothstep((1 - r) / 0.15) * np.clip((self.v - centre + 0.12) / 0.16, 0, 1)

    def air_structures(self, gastric: bool) -> np.ndarray:
        """Air outside the lungs (cm): trachea and main bronchi, and a gastric bubble under the left dome."""
        a, u, v = self.a, self.u, self.v
        air = 3.0 * _on((np.abs(u - a.cx) < 0.011) & (v > 0.02) & (v < 0.34))
        spread = 0.06 * np.clip((v - 0.34) / 0.06, 0, 1)
        air += 2.5 * _on((np.abs(self.lat - spread) < 0.008) & (v >= 0.34) & (v < 0.40))
        if gastric:
            gx, gy = a.cx + 0.13, float(self.dome_at(0.13, 1.0)) + 0.035
            du, dv = (u - gx) / 0.04, (v - gy) / 0.025
            air += 3.0 * _on((du * du + dv * dv < 1) & (v < gy + 0.006))
        return air


def _tree(rng: np.random.Generator, a: _Anatomy, depth: int = 3):
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
    noise = rng.uniform(0.006, 0.014) * (1.4 if view != "PA" else 1.0)
    x = x + 0.015 * _noise(rng, work, 6) + noise * np.sqrt(x + 0.05) * rng.standard_normal(x.shape, np.float32)
    if work != size:
        x = np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BICUBIC))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


# --- findings -------------------------------------------------------------------------------------------------
# Each takes the chest, a generator for the lesion's geometry (seeded by patient and finding, so a lesion keeps its
# place on follow-up films) and one for this image's texture; it edits the chest's fields and returns its mask.


def _opacify(c: _Chest, opacity: np.ndarray, vessels_kept: float = 0.0) -> None:
    """Airspace disease: fluid or cells replace the fraction ``opacity`` of the air; lung markings fade with it
    (``vessels_kept`` of them stay visible through ground glass)."""
    c.air *= 1 - opacity
    c.vessel_gain *= 1 - (1 - vessels_kept) * opacity


def _side(geo: np.random.Generator, right: float = 0.5) -> float:
    """-1.0 (the patient's right, on the image left) with probability ``right``, else +1.0."""
    return -1.0 if geo.random() < right else 1.0


def _bronchograms(c: _Chest, rng: np.random.Generator, region: np.ndarray, centre: tuple[float, float]) -> None:
    """Air bronchograms: dark tubes across a consolidation, pointing away from the hilum."""
    canvas = Image.new("F", (c.size, c.size), 0.0)
    draw = ImageDraw.Draw(canvas)
    hilum = np.array([c.a.cx + math.copysign(c.a.mediastinum + 0.03, centre[0] - c.a.cx), 0.41])
    heading = math.atan2(centre[1] - hilum[1], centre[0] - hilum[0])
    for angle in heading + rng.normal(0, 0.35, 4):
        step = np.array([math.cos(angle), math.sin(angle)])
        ends = c.to_pixels(np.stack([np.array(centre) - 0.06 * step, np.array(centre) + 0.06 * step]))
        draw.line([tuple(p) for p in ends.tolist()], fill=1.0, width=max(1, round(c.size / 100)))
    c.extra -= 4.0 * ndimage.gaussian_filter(np.asarray(canvas), 0.5 * c.size / 256, mode="nearest") * region


def _atelectasis(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    side = _side(geo, 0.55)
    if geo.random() < 0.6:  # plate-like (discoid) band in a lower zone
        cu, cv = c.lung_point(geo, side, (0.25, 0.75), (0.6, 0.85))
        angle, length = geo.uniform(-0.35, 0.35), geo.uniform(0.07, 0.14)
        thick = max(geo.uniform(0.008, 0.016), 1.0 / c.size)  # at least a pixel at any size
        du, dv = c.u - cu, c.v - cv
        along = (math.cos(angle) * du + math.sin(angle) * dv) / length
        across = (math.cos(angle) * dv - math.sin(angle) * du) / thick
        region = _smoothstep((1 - np.abs(across)) / 0.4) * _smoothstep((1 - np.abs(along)) / 0.2)
    else:  # segmental collapse: a wedge from the hilum toward the base
        hu, hv = c.a.cx + side * (c.a.mediastinum + 0.03), 0.42
        cu, cv = c.lung_point(geo, side, (0.4, 0.8), (0.7, 0.9))
        reach, spread = math.hypot(cu - hu, cv - hv), geo.uniform(0.12, 0.22)
        along = ((c.u - hu) * (cu - hu) + (c.v - hv) * (cv - hv)) / reach  # distance along the wedge's axis
        across = np.abs((c.v - hv) * (cu - hu) - (c.u - hu) * (cv - hv)) / reach
        region = _smoothstep((spread * along - across) / 0.01) * _smoothstep((1.15 * reach - along) / 0.02)
        region *= along > 0.2 * reach
    region = region * c.field
    _opacify(c, 0.9 * region)
    c.extra += 1.0 * region
    return region > 0.3


def _cardiomegaly(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    return c.heart_region & (c.v < c.diaphragm)  # _anatomy widened the heart


def _effusion(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(c.field)
    for side in (-1.0, 1.0) if geo.random() < 0.3 else (_side(geo),):
        height = geo.uniform(0.06, 0.18)  # of the fluid above the costophrenic angle, at the chest wall
        top = float(c.dome_at(c.a.ribcage, side)) - height
        level = top + 0.6 * height * (1 - c.fx) * (1 - c.fx)  # meniscus: the fluid climbs the chest wall
        fluid = _smoothstep((c.v - level) / 0.012) * (c.field & (c.side == side))
        _opacify(c, fluid)
        c.extra += 2.0 * fluid
        mask |= fluid > 0.3
    return mask


def _infiltration(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    patchy = 0.45 + 0.55 * _smoothstep((_noise(rng, c.size, 14) + 0.6) / 1.2)  # the centres always show
    region = np.zeros_like(c.u)
    for _ in range(geo.integers(1, 4)):
        centre = c.lung_point(geo, _side(geo), (0.2, 0.8), (0.25, 0.85))
        region = np.maximum(region, _smoothstep(1 - c.distance(centre, geo.uniform(0.06, 0.12))) * patchy)
    region *= c.field
    _opacify(c, 0.7 * region, vessels_kept=0.3)
    c.extra += 1.0 * region
    return region > 0.3


def _mass(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    centre = c.lung_point(geo, _side(geo), (0.3, 0.75), (0.15, 0.75))
    radius, phase = geo.uniform(0.035, 0.07), geo.uniform(0, 2 * np.pi)
    du, dv = c.u - centre[0], c.v - centre[1]
    d = c.distance(centre, radius) / (1 + 0.12 * np.sin(3 * np.arctan2(dv, du) + phase))  # lobulated
    region = np.sqrt(np.clip(1 - d * d, 0, 1)) * c.field  # a sphere's thickness
    _opacify(c, 0.75 * region)
    c.extra += 0.5 * region
    return (d < 1) & c.field


def _nodule(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(c.field)
    for _ in range(geo.choice([1, 2, 3], p=[0.6, 0.25, 0.15])):
        radius = max(geo.uniform(0.018, 0.032), 0.75 / c.size)  # covers a pixel centre at any size
        d = c.distance(c.lung_point(geo, _side(geo), (0.2, 0.85), (0.1, 0.85)), radius)
        region = np.sqrt(np.clip(1 - d * d, 0, 1)) * c.field  # a sphere's thickness
        _opacify(c, 0.6 * region)
        c.extra += (3.0 if geo.random() < 0.2 else 0.5) * region  # some are calcified granulomas
        mask |= (d < 1) & c.field
    return mask


def _pneumonia(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    lobe = geo.choice(["RUL", "RML", "RLL", "LUL", "LLL"], p=[0.2, 0.15, 0.3, 0.1, 0.25])
    side = -1.0 if lobe[0] == "R" else 1.0
    fissure = c.a.apex + 0.4 * (c.a.dome - c.a.apex)  # the horizontal fissure's height
    wobble = 0.15 * _noise(rng, c.size, 14)  # edges other than the fissure are ill-defined
    zone = {
        "RUL": _on(c.v < fissure),  # bounded below by the fissure: a sharp straight edge
        "RML": _smoothstep((c.v - fissure) / 0.01) * _smoothstep((0.65 + wobble - c.fx) / 0.15),
        "RLL": _smoothstep((c.fv - 0.45 + wobble) / 0.2),
        "LUL": _smoothstep((0.55 + wobble - c.fv) / 0.15),
        "LLL": _smoothstep((c.fv - 0.5 + wobble) / 0.2),
    }[lobe]
    patchy = 0.4 + 0.6 * _smoothstep((_noise(rng, c.size, 10) + 1.2) / 1.0)
    region = zone * patchy * (c.field & (c.side == side))
    _opacify(c, 0.9 * region)
    c.extra += 1.0 * region
    fv = {"RUL": (0.2, 0.3), "LUL": (0.2, 0.35)}.get(lobe, (0.6, 0.75))
    _bronchograms(c, rng, region, c.lung_point(geo, side, (0.4, 0.6), fv))
    return region > 0.3


def _pneumothorax(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    side = _side(geo)
    gap, reach = max(geo.uniform(0.025, 0.075) * c.size, 2.0), geo.uniform(0.4, 0.85)  # rim (px), extent down
    lung = c.field & (c.side == side)
    inside = ndimage.distance_transform_edt(lung).astype(np.float32)  # px to the lung's border
    edge = gap * np.sqrt(np.clip((reach - c.fv) / reach, 0, 1))  # the pleural line curves back to the wall
    outer = lung & ((c.fx > 0.3) | (c.fv < 0.12))  # apical and lateral, not along the mediastinum or the dome
    region = outer & (inside < edge)
    line = outer & (inside >= edge) & (inside < edge + max(1.0, c.size / 200)) & (edge > 0)
    c.air = np.where(region, 1.1 * c.a.aeration * c.tissue, c.air * (1 - 0.1 * lung))  # no lung outside the line
    c.vessel_gain *= ~region
    c.extra += 2.5 * line
    return region


def _consolidation(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    centre = c.lung_point(geo, _side(geo), (0.3, 0.7), (0.3, 0.85))
    d = c.distance(centre, geo.uniform(0.06, 0.1)) / (1 + 0.3 * np.clip(_noise(rng, c.size, 12), -1.5, 1.5))
    region = _smoothstep((1 - d) / 0.6) * c.field  # a ragged edge, the centre always dense
    _opacify(c, 0.8 * region)
    _bronchograms(c, rng, region, centre)
    return region > 0.5


def _edema(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    dx, dv = (c.lat - c.medial - 0.04) / 0.13, (c.v - 0.42) / 0.14
    patchy = 0.6 + 0.4 * _smoothstep((_noise(rng, c.size, 8) + 1) / 2)
    region = np.exp(-(dx * dx + dv * dv)) * patchy * c.field  # bat wing
    _opacify(c, 0.7 * region, vessels_kept=0.3)
    c.extra += 1.0 * region
    kerley = np.zeros_like(c.field)
    for side in (-1.0, 1.0):  # Kerley B lines: short horizontal lines at the lateral bases
        for _ in range(geo.integers(3, 7)):
            y = c.a.dome - geo.uniform(0.0, 0.08)
            kerley |= (c.side == side) & (np.abs(c.v - y) < 0.6 / c.size + 0.002) & (c.lateral - c.lat < 0.03)
    kerley &= c.field
    c.extra += 2.0 * kerley
    return (region > 0.3) | kerley


def _emphysema(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    c.vessel_gain *= np.clip(1.25 - 1.3 * c.fx, 0.15, 1)  # pruned peripheral vessels; _anatomy hyperinflated
    for _ in range(geo.integers(0, 3)):  # bullae: avascular lucencies with a hairline wall, upper zones
        d = c.distance(c.lung_point(geo, _side(geo), (0.4, 0.9), (0.05, 0.35)), geo.uniform(0.03, 0.06))
        c.vessel_gain *= d > 1
        c.air += 0.05 * c.tissue * ((d < 1) & c.field)
        c.extra += 0.8 * _on((np.abs(d - 1) < 0.06) & c.field)
    return c.field.copy()


def _fibrosis(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    zone = _smoothstep((c.fx - 0.4) / 0.25) * _smoothstep((c.fv - 0.4) / 0.25) * c.field
    net = _noise(rng, c.size, max(8, c.size // 8)) - 0.5 * _noise(rng, c.size, 6)
    reticulation = np.clip(1 - np.abs(net) / 0.35, 0, 1)  # the zero crossings of the field: a net of lines
    _opacify(c, 0.3 * zone)
    c.extra += 5.0 * reticulation * zone
    return zone > 0.5


def _pleural_thickening(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    side, thick = _side(geo), max(geo.uniform(0.012, 0.028), 1.5 / c.size)
    if geo.random() < 0.3:  # apical cap
        band = c.fv < geo.uniform(0.08, 0.14)
    else:  # along the lateral chest wall
        start = geo.uniform(0.2, 0.6)
        band = (c.lateral - c.lat < thick) & (c.fv > start) & (c.fv < start + geo.uniform(0.2, 0.4))
    band = band & c.field & (c.side == side)
    _opacify(c, _on(band))
    c.extra += 1.5 * _on(band)
    return band


def _hernia(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    radius = geo.uniform(0.035, 0.055)
    centre = (c.a.cx + geo.uniform(0.0, 0.04), c.a.dome + 0.02 - 0.7 * radius)
    d = c.distance(centre, radius)
    inside = (d < 1) & c.body
    fluid = c.v > centre[1] - 0.2 * radius  # below the air-fluid level
    c.extra += (8.0 * _on(fluid) - 5.0) * inside + 1.5 * _on(np.abs(d - 1) < 0.08)
    return inside


def _covid(c: _Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    wobble = 0.12 * _noise(rng, c.size, 7)
    zone = _smoothstep((c.fx - 0.15 + wobble) / 0.6) * _smoothstep((c.fv - 0.1 - wobble) / 0.6)
    region = zone * (0.45 + 0.55 * _smoothstep((_noise(rng, c.size, 9) + 1) / 2)) * c.field
    _opacify(c, 0.6 * region, vessels_kept=0.8)  # ground glass: vessels stay visible
    return region > 0.3


_FINDINGS = {  # applied in this order: diffuse and airspace disease first, pleura and lumps over them
    "Emphysema": _emphysema, "Fibrosis": _fibrosis, "Edema": _edema, "COVID-19": _covid,
    "Infiltration": _infiltration, "Pneumonia": _pneumonia, "Consolidation": _consolidation,
    "Atelectasis": _atelectasis, "Mass": _mass, "Nodule": _nodule, "Effusion": _effusion,
    "Pleural_Thickening": _pleural_thickening, "Pneumothorax": _pneumothorax, "Cardiomegaly": _cardiomegaly,
    "Hernia": _hernia,
}  # fmt: skip
_IN_BODY = ("Cardiomegaly", "Hernia")  # the other findings' masks lie in the lung fields


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
    chest = _Chest(_anatomy(np.random.default_rng(key), study), work, rng)
    lungs = chest.field.copy()
    masks = {}
    for finding, draw in _FINDINGS.items():
        if finding in study.findings:
            k = LABELS.index(finding)
            mask = draw(chest, np.random.default_rng([*key, 1000 + k]), np.random.default_rng([*image_key, k]))
            masks[finding] = mask & chest.body if finding in _IN_BODY else mask & lungs
    density = (chest.tissue + chest.bones(study.view) + chest.soft_tissue(study) + chest.extra - chest.air
               + chest.vessel_gain * chest.vessels(np.random.default_rng([*key, 99]))
               - chest.air_structures(gastric=rng.random() < 0.7)) * chest.body
    return Rendering(_expose(density, rng, study.view, size), {f: _resize(masks[f], size) for f in study.findings},
                     _resize(chest.body, size), _resize(lungs, size))


def _resize(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask resized to ``size`` x ``size`` by nearest neighbour."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


# --- files ----------------------------------------------------------------------------------------------------


def generate(out_dir: str | Path, *, n_patients: int = 800, n_covid_images: int = 120, image_size: int = 256,
             seed: int = 0) -> dict[str, Path]:
    """Write the synthetic sources under ``out_dir`` (layout in the module docstring); a function of the arguments.

    Everything an earlier run left in ``out_dir`` is deleted first (links, e.g. to a real download, are unlinked,
    never written through), and the CSV and list files are written last, each atomically: an interrupted run cannot
    pass for a complete one, nor leave files of another seed among this run's.

    Returns:
        Paths by kind: ``nih_images``, ``nih_masks``, ``nih_entries``, ``nih_train_val``, ``nih_test``,
        ``nih_boxes``, ``covid_images``, ``covid_masks``, ``covid_metadata``.
    """
    if n_patients < 1 or n_covid_images < 0 or image_size < 64 or seed < 0:
        raise ValueError(f"need n_patients >= 1, n_covid_images >= 0, image_size >= 64, seed >= 0; got "
                         f"{n_patients}, {n_covid_images}, {image_size}, {seed}")
    out_dir = empty_output_folder(out_dir)
    nih, covid = out_dir / NIH_DIR, out_dir / COVID_DIR
    paths = {"nih_images": nih / NIH_IMAGES_DIR, "nih_masks": nih / MASKS_DIR,
             "covid_images": covid / COVID_IMAGES_DIR, "covid_masks": covid / MASKS_DIR}
    for folder in paths.values():
        folder.mkdir(parents=True)
    studies = sample_cohort(n_patients, n_covid_images, seed)
    boxes = []
    test = _test_patients(studies, seed)
    for study in tqdm(studies, desc="synthetic cxr", unit="image", disable=None):
        rendering = render(study, image_size, seed)
        prefix = "nih" if study.source == "nih" else "covid"
        image_path = paths[f"{prefix}_images"] / study.file_name
        with atomic_path(image_path) as tmp:
            image = Image.fromarray(rendering.image)
            if study.source == "nih":
                image.save(tmp, format="PNG", compress_level=3)  # 4x faster than the default 6, 11% larger
            else:
                image.save(tmp, format="JPEG", quality=92)
        with atomic_path(paths[f"{prefix}_masks"] / f"{image_path.stem}.npz") as tmp:
            np.savez_compressed(tmp, **rendering.masks)
        if study.source == "nih" and study.patient in test:
            boxes += [(study.file_name, label, _box(mask)) for label, mask in rendering.masks.items()
                      if label in _BOX_FINDINGS]
    nih_studies = [s for s in studies if s.source == "nih"]
    paths["nih_entries"] = _write_csv(nih / NIH_CSV, (*NIH_COLUMNS_2020, ""),
                                      (_nih_row(s, image_size) for s in nih_studies))
    paths["nih_train_val"] = _write_lines(nih / NIH_TRAIN_VAL_LIST, [s.file_name for s in nih_studies
                                                                        if s.patient not in test])
    paths["nih_test"] = _write_lines(nih / NIH_TEST_LIST, [s.file_name for s in nih_studies if s.patient in test])
    paths["nih_boxes"] = _write_csv(nih / NIH_BBOX_CSV, ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]",
                                                         "", "", ""), (_box_row(*box) for box in boxes))
    paths["covid_metadata"] = _write_csv(covid / COVID_METADATA, (*COVID_METADATA_COLUMNS, ""),
                                         (_covid_row(s) for s in studies if s.source == "covid"))
    return paths


_BOX_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                 "Pneumothorax")  # the eight of BBox_List_2017.csv


def _test_patients(studies: list[Study], seed: int) -> set[int]:
    """ChestX-ray14 patients for test_list.txt: first, rarest finding first, a random ``TEST_IMAGE_FRACTION`` (at
    least one) of the patients with each finding, so every finding is tested; then random others until they hold
    ``TEST_IMAGE_FRACTION`` of the images."""
    rng = np.random.default_rng([seed, 8])
    images: dict[int, int] = {}
    carriers: dict[str, set[int]] = {finding: set() for finding in LABELS}
    for study in studies:
        if study.source == "nih":
            images[study.patient] = images.get(study.patient, 0) + 1
            for finding in study.findings:
                carriers[finding].add(study.patient)
    test: set[int] = set()
    for finding in sorted((f for f in carriers if carriers[f]), key=lambda f: len(carriers[f])):
        missing = math.ceil(TEST_IMAGE_FRACTION * len(carriers[finding])) - len(carriers[finding] & test)
        if missing > 0:
            test.update(rng.choice(sorted(carriers[finding] - test), missing, replace=False).tolist())
    for patient in rng.permutation(sorted(set(images) - test)).tolist():
        if sum(images[p] for p in test) >= TEST_IMAGE_FRACTION * sum(images.values()):
            break
        test.add(patient)
    return test


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` in pixels of the mask's bounding box."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])


def _box_row(image_index: str, label: str, box: tuple[float, ...]) -> list[str]:
    nih_label = {value: key for key, value in BBOX_LABELS.items()}.get(label, label)
    return [image_index, nih_label, *(f"{value:g}" for value in box), "", "", ""]


def _nih_row(study: Study, size: int) -> list[str]:
    spacing = f"{FIELD_OF_VIEW_MM / size:.3f}"
    labels = "|".join(sorted(study.findings)) or "No Finding"
    return [study.file_name, labels, str(study.follow_up), str(study.patient), str(study.age), study.sex, study.view,
            str(size), str(size), spacing, spacing, ""]


def _covid_row(study: Study) -> list[str]:
    row = dict.fromkeys(COVID_METADATA_COLUMNS, "")
    row.update(patientid=str(study.patient), offset=str(3 * study.follow_up), sex=study.sex, age=str(study.age),
               finding="Pneumonia/Viral/COVID-19", RT_PCR_positive="Y", view=study.view, modality="X-ray",
               date="2020", folder="images", filename=study.file_name,
               other_notes="procedurally generated by flexheads.data.synthetic_cxr")
    return [*row.values(), ""]


def _write_csv(path: Path, header: tuple[str, ...], rows: Iterable[list[str]]) -> Path:
    """Write a CSV atomically; the sources end every line with empty columns (trailing commas), so do the callers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def _write_lines(path: Path, lines: list[str]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))
    return path
