"""The COCO files (``generate``): rendered scenes written in the COCO 2017 ``person_keypoints`` format.

Writes, under ``out_dir``: ``images/{train,val}2017/<12-digit image id>.jpg`` and
``annotations/person_keypoints_{train,val}2017.json``.  People with no labelled keypoint, none visible, or a box
side under 8 px are left out, as COCO leaves tiny or hidden people unannotated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flexheads.data.coco import KEYPOINT_NAMES, SKELETON
from flexheads.data.synthetic_coco.rendering import PersonLabel, annotate, render
from flexheads.data.synthetic_coco.sampling import sample_scene
from flexheads.io import atomic_path, empty_output_folder

SPLITS = ("train2017", "val2017")


def _coco_annotation(label: PersonLabel) -> dict | None:
    """The COCO annotation fields of ``label`` (without ids), or None for people COCO would leave unannotated."""
    visibility = label.keypoints[:, 2]
    if not (visibility == 2).any() or min(label.bbox[2:]) < 8:
        return None
    keypoints = [round(float(x), 2) if i % 3 < 2 else int(x) for i, x in enumerate(label.keypoints.ravel())]
    return {"segmentation": [], "num_keypoints": int(np.count_nonzero(visibility)), "area": label.area,
            "iscrowd": 0, "keypoints": keypoints, "bbox": [round(float(v), 2) for v in label.bbox],
            "category_id": 1}  # fmt: skip


def generate(
    out_dir: Path,
    *,
    n_train_images: int = 160,
    n_val_images: int = 40,
    image_size: tuple[int, int] = (320, 240),
    max_people: int = 3,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` (layout in the module docstring), after deleting everything an
    earlier run left there: an interrupted or other-seed run's files cannot mix with this one's, and a folder that
    is a link (e.g. ``images/train2017`` to a real COCO download) is unlinked, never written through.

    Image ``i`` of a split draws from its own generator seeded by ``(seed, split, i)``, so its pixels do not depend
    on the other split's size; image and annotation ids count up from 1 over train then val, as in one COCO release.

    Returns:
        ``{'train_images': dir, 'train_annotations': json, 'val_images': dir, 'val_annotations': json}``: the
        ``image_dir`` and ``annotation_json`` arguments of ``coco.load_person_keypoints``.
    """
    if n_train_images < 0 or n_val_images < 0 or max_people < 1 or seed < 0:
        raise ValueError(f"need image counts >= 0, max_people >= 1, seed >= 0; got {n_train_images}, "
                         f"{n_val_images}, {max_people}, {seed}")  # fmt: skip
    if min(image_size) < 16 or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"need an image size of at least 16x16 and jpeg_quality in [1, 100]; got {image_size}, "
                         f"{jpeg_quality}")  # fmt: skip
    out_dir = empty_output_folder(out_dir)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
                "skeleton": [list(pair) for pair in SKELETON]}  # fmt: skip
    paths: dict[str, Path] = {}
    image_id = annotation_id = 0
    for split_index, (split, count) in enumerate(zip(SPLITS, (n_train_images, n_val_images))):
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id += 1
            scene = sample_scene(np.random.default_rng([seed, split_index, index]), image_size, max_people)
            rendering = render(scene)
            file_name = f"{image_id:012d}.jpg"
            with atomic_path(image_dir / file_name) as tmp:
                rendering.image.save(tmp, format="JPEG", quality=jpeg_quality)
            images.append({"id": image_id, "file_name": file_name, "width": image_size[0], "height": image_size[1]})
            for label in annotate(scene, rendering):
                record = _coco_annotation(label)
                if record is not None:
                    annotation_id += 1
                    annotations.append({**record, "image_id": image_id, "id": annotation_id})
        dataset = {
            "info": {"description": f"flexheads synthetic COCO person keypoints, seed {seed}", "version": "1.0",
                     "year": 2017, "contributor": "flexheads.data.synthetic_coco"},
            "licenses": [], "images": images, "annotations": annotations, "categories": [category],
        }  # fmt: skip
        json_path = out_dir / "annotations" / f"person_keypoints_{split}.json"
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(dataset, separators=(",", ":")))
        paths[f"{split[:-4]}_images"], paths[f"{split[:-4]}_annotations"] = image_dir, json_path
    return paths
