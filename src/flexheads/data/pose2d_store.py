"""Writing pose2d.h5: the person crops of one split, appended in blocks to chunked datasets, and their statistics.

:func:`by_image` groups a split's person records so ``prepare`` decodes each image once; :class:`CropWriter` cuts
each person's crop (:mod:`flexheads.data.crops`) and writes its row. The datasets of a split group are listed in
:func:`flexheads.tasks.pose2d.prepare`.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
from PIL import Image

from flexheads.data.coco import KEYPOINT_NAMES, PersonRecord
from flexheads.data.crops import apply_affine, crop_affine, crop_image, invert_affine


def by_image(records: list[PersonRecord]) -> list[list[PersonRecord]]:
    """Records grouped by image, in order of first appearance (each image is decoded once)."""
    groups: dict[int, list[PersonRecord]] = {}
    for record in records:
        groups.setdefault(record.image_id, []).append(record)
    return list(groups.values())


class CropWriter:
    """Appends crops in blocks to the resizable, chunked datasets of one split group, and summarises them."""

    BLOCK = 256  # rows buffered between writes

    def __init__(self, group: h5py.Group, crop_size: tuple[int, int]) -> None:
        self.group, self.crop_size = group, crop_size
        k = len(KEYPOINT_NAMES)
        columns = {"images": ((*crop_size, 3), np.uint8), "keypoints": ((k, 2), np.float32), "visible": ((k,), bool),
                   "keypoints_image": ((k, 3), np.float32), "affine": ((2, 3), np.float32), "image_id": ((), np.int64),
                   "annotation_id": ((), np.int64), "bbox": ((4,), np.float32), "area": ((), np.float32)}
        for name, (shape, dtype) in columns.items():  # created up front, so an empty split has them too
            chunk_rows = 16 if name == "images" else 4096  # images: ~0.6 MB chunks at 128×96
            group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                 chunks=(chunk_rows, *shape), compression="gzip")
        self.buffer: dict[str, list[np.ndarray]] = {}
        self.rows = 0
        self.images: set[int] = set()
        self.labelled = np.zeros(k)  # per keypoint: rows where v > 0
        self.sum_xy = np.zeros((k, 2))  # and the sum of their normalised crop coordinates

    def append(self, image: Image.Image, record: PersonRecord) -> None:
        """Buffer the crop of ``record``'s person, cut from its decoded ``image``; write a full block."""
        affine = crop_affine(record.bbox, self.crop_size)
        visible = record.keypoints[:, 2] > 0
        keypoints = np.where(visible[:, None], apply_affine(invert_affine(affine), record.keypoints[:, :2]), 0.0)
        row = {
            "images": crop_image(image, affine, self.crop_size),
            "keypoints": keypoints.astype(np.float32),
            "visible": visible,
            "keypoints_image": record.keypoints.astype(np.float32),
            "affine": affine.astype(np.float32),
            "image_id": np.int64(record.image_id),
            "annotation_id": np.int64(record.annotation_id),
            "bbox": record.bbox.astype(np.float32),
            "area": np.float32(record.area),
        }
        for name, value in row.items():
            self.buffer.setdefault(name, []).append(value)
        self.images.add(record.image_id)
        self.labelled += visible
        self.sum_xy += keypoints / np.array(self.crop_size[::-1]) * visible[:, None]
        if len(self.buffer["images"]) >= self.BLOCK:
            self._flush()

    def _flush(self) -> None:
        n = len(self.buffer.get("images", ()))
        for name, values in self.buffer.items():
            dataset = self.group[name]
            dataset.resize(self.rows + n, axis=0)
            dataset[self.rows :] = np.stack(values)
        self.rows += n
        self.buffer = {}

    def close(self) -> dict[str, Any]:
        """Write what is buffered; return counts, the labelled fraction per keypoint and the mean pose."""
        self._flush()
        mean_pose = np.where(self.labelled[:, None] > 0, self.sum_xy / np.maximum(self.labelled, 1)[:, None], 0.5)
        self.group.attrs["keypoints_mean"] = mean_pose  # normalised crop coordinates, (17, 2)
        return {
            "rows": self.rows,  # persons
            "images": len(self.images),
            "labelled_fraction": dict(zip(KEYPOINT_NAMES, (self.labelled / max(self.rows, 1)).round(4).tolist())),
            "keypoints_mean": mean_pose.round(6).tolist(),
        }
