"""COCO 2017 person keypoints: constants, download, and a validated loader of one record per annotated person.

Files (https://cocodataset.org/#download): ``annotations_trainval2017.zip`` holds
``annotations/person_keypoints_{train,val}2017.json``; ``train2017.zip`` / ``val2017.zip`` hold
``{train,val}2017/<12-digit id>.jpg``.  A keypoint annotation has ``keypoints`` = 17 × (x, y, v) flattened to 51
numbers in pixels, ``v`` = 0 not labelled, 1 labelled but occluded, 2 visible; ``bbox`` = (x, y, w, h).

Every loader failure is a ``CocoFormatError`` naming the file, the annotation/image id, and what was expected
versus found.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from flexheads.errors import DataError
from flexheads.data.download import RemoteFile, download_file
from flexheads.data.extract import extract_once

__all__ = [
    "COCO_BASE_URL",
    "COCO_FILES",
    "FLIP_PAIRS",
    "KEYPOINT_NAMES",
    "SKELETON",
    "CocoFormatError",
    "PersonRecord",
    "check_image",
    "download_coco",
    "load_person_keypoints",
]

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# The person category's "skeleton" in person_keypoints_*2017.json: limbs as ONE-based keypoint indices.
SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# Zero-based (left, right) pairs swapped by a horizontal flip.
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))

COCO_BASE_URL = "http://images.cocodataset.org"
# cocodataset.org publishes no checksums. The MD5s below are the whole-file digests that independent projects
# verify against (PaddleDetection's dataset table, MLPerf's COCO scripts, torchvision-style loaders all carry the
# same three values); sizes are the server's Content-Length, in bytes. The server's S3 ETags for the two image zips
# are multipart ETags, not MD5s, so do not take digests from there.
COCO_FILES: dict[str, RemoteFile] = {
    "annotations_trainval2017.zip": RemoteFile(
        f"{COCO_BASE_URL}/annotations/annotations_trainval2017.zip",
        size=252_907_541, md5="f4bbac642086de4f52a3fdda2de5fa2c",
    ),
    "val2017.zip": RemoteFile(
        f"{COCO_BASE_URL}/zips/val2017.zip", size=815_585_330, md5="442b8da7639aecaf257c1dceb8ba8c80",
    ),
    "train2017.zip": RemoteFile(
        f"{COCO_BASE_URL}/zips/train2017.zip", size=19_336_861_798, md5="cced6f7f71b7629ddf16f17bbcfab6b2",
    ),
}  # fmt: skip


class CocoFormatError(DataError):
    """A COCO keypoint file or image does not match the format; the message names the file and the record."""


@dataclass(frozen=True, eq=False)
class PersonRecord:
    """One annotated person: pixel coordinates in the original image.

    ``keypoints`` is float32 ``(17, 3)`` = (x, y, v) in ``KEYPOINT_NAMES`` order, ``bbox`` float32 ``(4,)`` =
    (x, y, w, h); ``image_size`` = (width, height) from the annotation file.
    """

    image_id: int
    file_name: str
    image_size: tuple[int, int]
    bbox: np.ndarray
    keypoints: np.ndarray
    area: float
    annotation_id: int


# --- download -------------------------------------------------------------------------------------------------


def download_coco(
    root: Path,
    files: Sequence[str] = ("annotations_trainval2017.zip", "val2017.zip"),
    progress: bool = True,
    *,
    base_url: str = COCO_BASE_URL,
    catalog: Mapping[str, RemoteFile] = COCO_FILES,
) -> Path:
    """Download, verify and unpack COCO archives into ``root`` (``root/annotations``, ``root/val2017``, ...).

    The archives stay in ``root`` (a rerun verifies instead of fetching). After each archive is unpacked a marker
    ``root/<archive>.extracted.json`` records its URL, size and MD5; a rerun whose marker matches skips that archive
    entirely, so the 118k-image ``train2017.zip`` is neither hashed nor unpacked twice.

    Args:
        files: archive names, keys of ``catalog``.
        base_url: replaces ``COCO_BASE_URL`` in the catalog URLs (a mirror, or a local server in tests).
        catalog: name → ``RemoteFile`` with the official URL and expected size/MD5.

    Returns:
        ``root``.
    """
    root = Path(root)
    unknown = [name for name in files if name not in catalog]
    if unknown:
        raise ValueError(f"unknown COCO files {unknown}; known: {sorted(catalog)}")
    for name in files:
        remote = catalog[name]
        record = {"url": remote.url, "size": remote.size, "md5": remote.md5}
        fetch = partial(download_file, _on_mirror(remote.url, base_url), root / name, md5=remote.md5,
                        sha256=remote.sha256, size=remote.size, progress=progress)
        extract_once(root, name, record, fetch, progress=progress)
    return root


def _on_mirror(url: str, base_url: str) -> str:
    """``url`` with the official host replaced by ``base_url`` (URLs elsewhere are kept)."""
    if url.startswith(COCO_BASE_URL + "/"):
        return base_url.rstrip("/") + url[len(COCO_BASE_URL):]
    return url


# --- loading --------------------------------------------------------------------------------------------------


def check_image(path: Path) -> tuple[int, int]:
    """Decode the image at ``path`` completely and return its ``(width, height)``; ``CocoFormatError`` if it cannot."""
    try:
        with Image.open(path) as image:
            image.load()  # open() only reads the header; load() decodes every pixel and catches truncated files
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CocoFormatError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


def load_person_keypoints(annotation_json: Path, image_dir: Path, *, verify_images: bool = False) -> list[PersonRecord]:
    """One ``PersonRecord`` per person annotation of a COCO keypoint file, in file order.

    Crowd regions (``iscrowd``) and people without a labelled keypoint (``num_keypoints == 0``) are skipped, as the
    standard COCO keypoint training pipelines do (SimpleBaseline/HRNet drop annotations whose keypoints are all 0;
    the official evaluation ignores crowds).  Skipped annotations are not validated further.

    Args:
        annotation_json: ``person_keypoints_<split>2017.json`` (or any file in that format).
        image_dir: folder holding the referenced ``file_name``s; each must exist (checked, not decoded).
        verify_images: also decode every referenced image and compare its size with the annotation file
            (minutes for train2017, so off by default; ``check_image`` does one file).

    Raises:
        CocoFormatError: naming the file and the annotation/image id.
    """
    annotation_json, image_dir = Path(annotation_json), Path(image_dir)
    coco = _load_coco(annotation_json)
    person_ids = [cat["id"] for cat in coco.dataset["categories"] if cat.get("name") == "person"]
    if not person_ids:
        names = [cat.get("name") for cat in coco.dataset["categories"]]
        raise CocoFormatError(f"{annotation_json}: no 'person' category; found categories {names}")
    person = coco.cats[person_ids[0]]
    if "keypoints" in person and len(person["keypoints"]) != NUM_KEYPOINTS:
        raise CocoFormatError(f"{annotation_json}: person category: expected {NUM_KEYPOINTS} keypoint names, "
                              f"found {len(person['keypoints'])}")

    records = []
    checked: dict[int, tuple[int, int]] = {}  # image id → (w, h) of images already checked
    for ann in coco.loadAnns(coco.getAnnIds(catIds=person_ids)):
        where = f"{annotation_json}: annotation {ann.get('id')} (image {ann.get('image_id')})"
        if ann.get("iscrowd", 0) or ann.get("num_keypoints") == 0:
            continue
        keypoints = _keypoints(where, ann.get("keypoints"))
        if "num_keypoints" not in ann and not keypoints[:, 2].any():
            continue
        image_id = ann.get("image_id")
        if image_id not in checked:
            checked[image_id] = _image_size(where, coco.imgs.get(image_id), image_dir, verify_images)
        records.append(PersonRecord(
            image_id=int(image_id),
            file_name=coco.imgs[image_id]["file_name"],
            image_size=checked[image_id],
            bbox=_bbox(where, ann.get("bbox")),
            keypoints=keypoints,
            area=float(ann.get("area", 0.0)),
            annotation_id=int(ann["id"]),
        ))  # fmt: skip
    return records


def _load_coco(path: Path) -> COCO:
    """Read ``path`` once, check the top-level layout, and index it with pycocotools (its prints silenced)."""
    if not path.is_file():
        raise CocoFormatError(f"{path}: file not found (expected a COCO person_keypoints json)")
    try:
        dataset = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CocoFormatError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(dataset, dict):
        raise CocoFormatError(f"{path}: expected a JSON object at the top level, found {type(dataset).__name__}")
    missing = [key for key in ("annotations", "images", "categories") if key not in dataset]
    if missing:
        raise CocoFormatError(f"{path}: missing top-level keys {missing}; found {sorted(dataset)}")
    for key in ("annotations", "images", "categories"):
        if not isinstance(dataset[key], list) or not all(isinstance(item, dict) for item in dataset[key]):
            raise CocoFormatError(f"{path}: {key!r} must be a list of objects")
    for key in ("annotations", "images", "categories"):
        without_id = [i for i, item in enumerate(dataset[key]) if "id" not in item]
        if without_id:
            raise CocoFormatError(f"{path}: {key}[{without_id[0]}] has no 'id'")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as err:
            raise CocoFormatError(f"{path}: cannot index the annotations ({type(err).__name__}: {err})") from err
    return coco


def _keypoints(where: str, values: Any) -> np.ndarray:
    length = len(values) if isinstance(values, (list, tuple)) else None
    if length != 3 * NUM_KEYPOINTS:
        found = f"{length} values" if length is not None else repr(values)[:80]
        raise CocoFormatError(f"{where}: expected 'keypoints' with {3 * NUM_KEYPOINTS} numbers, found {found}")
    if not all(_is_finite_number(v) for v in values):
        raise CocoFormatError(f"{where}: 'keypoints' must be finite numbers")
    keypoints = np.asarray(values, dtype=np.float32).reshape(NUM_KEYPOINTS, 3)
    if not np.isin(keypoints[:, 2], (0, 1, 2)).all():
        raise CocoFormatError(f"{where}: keypoint visibility must be 0, 1 or 2, found {sorted(set(keypoints[:, 2]))}")
    return keypoints


def _bbox(where: str, values: Any) -> np.ndarray:
    if not isinstance(values, (list, tuple)) or len(values) != 4 or not all(_is_finite_number(v) for v in values):
        raise CocoFormatError(f"{where}: expected 'bbox' = 4 numbers (x, y, w, h), found {values!r:.80}")
    return np.asarray(values, dtype=np.float32)


def _image_size(where: str, image: dict | None, image_dir: Path, verify: bool) -> tuple[int, int]:
    if image is None:
        raise CocoFormatError(f"{where}: image id not listed in 'images'")
    for key in ("file_name", "width", "height"):
        if key not in image:
            raise CocoFormatError(f"{where}: image record has no {key!r}")
    path = image_dir / image["file_name"]
    if not path.is_file():
        raise CocoFormatError(f"{where}: image file {path} not found")
    size = (int(image["width"]), int(image["height"]))
    if verify:
        try:
            decoded = check_image(path)
        except CocoFormatError as err:
            raise CocoFormatError(f"{where}: {err}") from err
        if decoded != size:
            raise CocoFormatError(f"{where}: {path} is {decoded[0]}x{decoded[1]}, the annotation says "
                                  f"{size[0]}x{size[1]}")
    return size


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
