"""The cohort: which radiographs there are, of whom, in which view, with which findings (no pixels).

``n_patients`` ChestX-ray14 patients with 1-4 images each (follow-up 0, 1, ...) and ``n_covid_images`` COVID-19
images from patients with 1-3 images. Findings are drawn per image in a fixed order, each with a base rate raised by
the findings already drawn (``_CO_OCCURRENCE``: effusion with cardiomegaly, edema and pneumonia; nodule with mass;
infiltration with pneumonia, edema and effusion; ...), tuned so the marginals follow NIH's per-image prevalences
(Infiltration ~18% ... Hernia, raised from NIH's 0.2% to ~0.5% so that it exists at the default size) with ~50% "No
Finding". A follow-up keeps the chronic findings of the previous image with probability 0.8, and a lesion sits at the
same place on every image of a patient (its geometry is seeded by patient and finding, see ``rendering.render``).
AP views are more likely on images with acute findings, as portable films are in practice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexheads.data.cxr import LABELS

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
