"""The files (``generate``): a cohort rendered and written in the on-disk layouts of NIH ChestX-ray14 and of the
covid-chestxray-dataset, with the patient-disjoint test split and NIH's box list.

Writes, under ``out_dir`` (emptied first):

* ``chestxray14/``: ``images/<patient:08d>_<follow-up:03d>.png`` (8-bit grayscale), ``Data_Entry_2017_v2020.csv``,
  ``train_val_list.txt`` and ``test_list.txt`` (patient-disjoint, ~22% of the images and of the patients with each
  finding in test, as NIH's split),
  ``BBox_List_2017.csv`` (the box of each test-image mask of NIH's eight box findings, NIH's ``Infiltrate`` spelling)
  and ``masks/<stem>.npz``;
* ``covid-chestxray-dataset/``: ``metadata.csv`` (the repository's columns), ``images/*.jpg`` and ``masks/<stem>.npz``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from flexheads.data.cxr import (
    BBOX_LABELS, COVID_DIR, COVID_IMAGES_DIR, COVID_METADATA, COVID_METADATA_COLUMNS, LABELS, MASKS_DIR, NIH_BBOX_CSV,
    NIH_COLUMNS_2020, NIH_CSV, NIH_DIR, NIH_IMAGES_DIR, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST,
)
from flexheads.data.synthetic_cxr.cohort import Study, sample_cohort
from flexheads.data.synthetic_cxr.rendering import render
from flexheads.io import atomic_path, empty_output_folder

TEST_IMAGE_FRACTION = 0.22  # NIH's test_list.txt holds 25,596 of 112,120 images (22.8%)
FIELD_OF_VIEW_MM = 430.0  # one image width; sets the pixel spacing written to the CSV


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
