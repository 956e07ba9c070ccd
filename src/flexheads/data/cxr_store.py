"""Writing cxr.h5: the table of the images to prepare, and the writer of one split group.

* :func:`records`: one row per image of the raw layout (``flexheads.tasks.cxr`` docstring), its patient-disjoint
  split and its labels, for every source (ChestX-ray14 and COVID-19, or a user's folder);
* :class:`SplitWriter`: appends blocks of decoded rows (:mod:`flexheads.data.cxr_images`) to the chunked datasets
  of one split group and summarises them (counts, positives, pixel moments).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd

from flexheads.data.cxr import (
    COVID_DIR, COVID_IMAGES_DIR, COVID_METADATA, COVID_TEST_FRACTION, FOLDER_DIR, LABELS, MASKS_DIR, NIH_CSV,
    NIH_DIR, NIH_IMAGES_DIR, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST, check_patients_disjoint, folder_splits, nih_splits,
    read_covid_metadata, read_folder_entries, read_nih_entries,
)
from flexheads.data.splits import hashed_splits

if TYPE_CHECKING:  # the data layer does not load the params schema
    from flexheads.tasks.settings.cxr import CxrData

FOLDER_LABELS = "labels.csv"  # a user's labels CSV, as linked into the raw layout's folder/
CHUNK_ROWS = 64  # images per HDF5 chunk: 256 KB at 64x64
BLOCK_ROWS = 256  # images decoded (in parallel) and written per block


def records(data: CxrData, raw_dir: Path) -> pd.DataFrame:
    """One row per image to prepare, in file order: ``path``, ``image_index``, ``patient_id``, ``source`` (nih,
    covid or folder), ``split``, ``mask_path`` (synthetic data; else None) and one 0/1 column per ``LABELS``."""
    raw_dir = Path(raw_dir)
    parts = []
    if data.source == "folder":
        folder = raw_dir / FOLDER_DIR
        entries = read_folder_entries(folder / FOLDER_LABELS)
        split = folder_splits(entries, folder / FOLDER_LABELS, data.folder.test_fraction, data.val_fraction)
        parts.append(_rows(entries, split, "folder", folder / NIH_IMAGES_DIR, None))
    else:
        nih = raw_dir / NIH_DIR
        entries = read_nih_entries(nih / NIH_CSV)
        split = nih_splits(entries, nih / NIH_TRAIN_VAL_LIST, nih / NIH_TEST_LIST, data.val_fraction)
        masks = nih / MASKS_DIR if data.source == "synthetic" else None
        parts.append(_rows(entries, split, "nih", nih / NIH_IMAGES_DIR, masks))
        if data.include_covid:
            covid = raw_dir / COVID_DIR
            entries = read_covid_metadata(covid / COVID_METADATA)
            split = hashed_splits(entries["Patient ID"], COVID_TEST_FRACTION, data.val_fraction, "covid")
            masks = covid / MASKS_DIR if data.source == "synthetic" else None
            parts.append(_rows(entries, split, "covid", covid / COVID_IMAGES_DIR, masks))
    rows = pd.concat(parts, ignore_index=True)
    check_patients_disjoint(rows["source"] + "/" + rows["patient_id"], rows["split"], str(raw_dir))
    return rows


def _rows(entries: pd.DataFrame, split: pd.Series, source: str, images: Path, masks: Path | None) -> pd.DataFrame:
    """The :func:`records` rows of one source's ``entries`` (``Image Index``, ``Patient ID``, label columns)."""
    names = entries["Image Index"]
    rows = pd.DataFrame({
        "path": [images / name for name in names],
        "image_index": names.to_numpy(),
        "patient_id": entries["Patient ID"].to_numpy(),
        "source": source,
        "split": split.to_numpy(),
        "mask_path": [masks / f"{Path(name).stem}.npz" for name in names] if masks else None,
    })  # fmt: skip
    labels = entries.reindex(columns=list(LABELS), fill_value=0).astype(np.uint8).reset_index(drop=True)
    return pd.concat([rows, labels], axis=1)


class SplitWriter:
    """Appends blocks of rows to the resizable, chunked datasets of one split group, and summarises them."""

    def __init__(self, group: h5py.Group, size: int, with_masks: bool) -> None:
        self.group, self.rows = group, 0
        text = h5py.string_dtype()
        shapes = {"images": ((size, size), np.uint8), "labels": ((len(LABELS),), np.uint8),
                  "patient_id": ((), text), "image_index": ((), text), "source": ((), text)}
        if with_masks:
            shapes["masks"] = ((size, size), np.uint16)
        for name, (shape, dtype) in shapes.items():
            compression = "gzip" if name in ("images", "masks") else None
            group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                 chunks=(CHUNK_ROWS if shape else 4096, *shape), compression=compression)
        self.patients: set[str] = set()
        self.positives = np.zeros(len(LABELS), np.int64)
        self.no_finding = 0
        self.pixel_sum = self.pixel_squares = 0.0

    def write(self, block: pd.DataFrame, loaded: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Append the :func:`records` rows ``block`` with their decoded ``(image, mask bits or None)``."""
        images = np.stack([image for image, _ in loaded])
        labels = block[list(LABELS)].to_numpy(np.uint8)
        columns = {"images": images, "labels": labels}
        columns |= {name: block[name].to_numpy(object) for name in ("patient_id", "image_index", "source")}
        if "masks" in self.group:
            columns["masks"] = np.stack([bits for _, bits in loaded])
        for name, values in columns.items():
            dataset = self.group[name]
            dataset.resize(self.rows + len(values), axis=0)
            dataset[self.rows :] = values
        self.rows += len(images)
        self.patients.update(block["source"] + "/" + block["patient_id"])
        self.positives += labels.sum(0, dtype=np.int64)
        self.no_finding += int((labels.sum(1) == 0).sum())
        pixels = images.astype(np.float64) / 255.0
        self.pixel_sum += pixels.sum()
        self.pixel_squares += np.square(pixels).sum()

    def summary(self) -> dict[str, Any]:
        """Rows, patients, positives per finding and images with no finding, written so far."""
        return {"rows": self.rows, "patients": len(self.patients),
                "positives": dict(zip(LABELS, self.positives.tolist())), "no_finding": self.no_finding}

    def pixel_moments(self) -> tuple[float, float]:
        """Mean and standard deviation ``sqrt(E[x²] - E[x]²)`` of the split's pixels x in [0, 1]."""
        count = max(self.rows * self.group["images"].shape[1] * self.group["images"].shape[2], 1)
        mean = self.pixel_sum / count
        return round(mean, 6), round(float(np.sqrt(max(self.pixel_squares / count - mean * mean, 0.0))), 6)
