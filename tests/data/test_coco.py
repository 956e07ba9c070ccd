"""COCO person keypoints: constants, the loader on a hand-written file with real JPEGs, its errors, and the download."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexheads.data import coco
from flexheads.data.coco import CocoFormatError
from flexheads.data.download import RemoteFile

from .test_download import serve

SIZES = {1: (32, 24), 2: (40, 30)}


def _keypoints(seed: int, labelled: int) -> list[float]:
    """51 numbers: the first ``labelled`` keypoints at pixel positions with v = 2, the rest (0, 0, 0)."""
    xy = np.random.default_rng(seed).integers(0, 20, size=(17, 2)).astype(float)
    flat = []
    for k in range(17):
        flat += [xy[k, 0], xy[k, 1], 2.0] if k < labelled else [0.0, 0.0, 0.0]
    return flat


def _dataset() -> dict:
    def ann(ann_id: int, image_id: int, labelled: int, **extra) -> dict:
        return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0],
                "area": 100.0 + ann_id, "iscrowd": 0, "num_keypoints": labelled,
                "keypoints": _keypoints(ann_id, labelled), **extra}  # fmt: skip

    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h} for i, (w, h) in SIZES.items()],
        "annotations": [
            ann(10, 1, 17),
            ann(11, 2, 5),
            ann(12, 1, 0, iscrowd=1),  # a crowd region: skipped
            ann(13, 2, 0),  # nobody labelled: skipped
            {"id": 14, "image_id": 1, "category_id": 18, "bbox": [0, 0, 5, 5], "area": 25.0, "iscrowd": 0},
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(coco.KEYPOINT_NAMES),
             "skeleton": [list(pair) for pair in coco.SKELETON]},
            {"id": 18, "name": "dog", "supercategory": "animal"},
        ],
    }  # fmt: skip


def _write(root: Path, dataset: dict) -> tuple[Path, Path]:
    images = root / "val2017"
    images.mkdir(parents=True, exist_ok=True)
    for image_id, size in SIZES.items():
        Image.new("RGB", size, color=(image_id * 60, 90, 30)).save(images / f"{image_id:012d}.jpg")
    path = root / "annotations" / "person_keypoints_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataset))
    return path, images


def test_constants_follow_the_coco_person_category() -> None:
    assert len(coco.KEYPOINT_NAMES) == 17 and len(coco.SKELETON) == 19
    assert all(1 <= a <= 17 and 1 <= b <= 17 for a, b in coco.SKELETON)
    for left, right in coco.FLIP_PAIRS:
        name_l, name_r = coco.KEYPOINT_NAMES[left], coco.KEYPOINT_NAMES[right]
        assert name_l.startswith("left_") and name_r == name_l.replace("left_", "right_")
    assert {name.url.rsplit("/", 1)[1] for name in coco.COCO_FILES.values()} == set(coco.COCO_FILES)


def test_loader_keeps_labelled_non_crowd_people(tmp_path: Path) -> None:
    dataset = _dataset()
    path, images = _write(tmp_path, dataset)
    records = coco.load_person_keypoints(path, images, verify_images=True)
    assert [r.annotation_id for r in records] == [10, 11]
    for record, ann in zip(records, dataset["annotations"]):
        assert record.image_id == ann["image_id"] and record.file_name == f"{ann['image_id']:012d}.jpg"
        assert record.image_size == SIZES[ann["image_id"]] and record.area == ann["area"]
        assert record.keypoints.shape == (17, 3) and record.keypoints.dtype == np.float32
        np.testing.assert_array_equal(record.keypoints, np.reshape(ann["keypoints"], (17, 3)))
        np.testing.assert_array_equal(record.bbox, [1, 2, 10, 12])
    assert (records[1].keypoints[5:] == 0).all() and (records[1].keypoints[:5, 2] == 2).all()


def _break(dataset: dict, how: str) -> dict:
    broken = copy.deepcopy(dataset)
    if how == "no annotations":
        del broken["annotations"]
    elif how == "short keypoints":
        broken["annotations"][1]["keypoints"] = broken["annotations"][1]["keypoints"][:48]
    elif how == "bad bbox":
        broken["annotations"][0]["bbox"] = [1.0, 2.0, 3.0]
    elif how == "no person":
        broken["categories"][0]["name"] = "human"
    return broken


@pytest.mark.parametrize(
    "how, expected",
    [
        ("no annotations", "missing top-level keys ['annotations']"),
        ("short keypoints", "annotation 11 (image 2): expected 'keypoints' with 51 numbers, found 48 values"),
        ("bad bbox", "annotation 10 (image 1): expected 'bbox' = 4 numbers"),
        ("no person", "no 'person' category"),
    ],
)
def test_format_errors_name_file_and_record(tmp_path: Path, how: str, expected: str) -> None:
    path, images = _write(tmp_path, _break(_dataset(), how))
    with pytest.raises(CocoFormatError) as err:
        coco.load_person_keypoints(path, images)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    path, images = _write(tmp_path, _dataset())
    (images / "000000000002.jpg").unlink()
    with pytest.raises(CocoFormatError) as err:
        coco.load_person_keypoints(path, images)
    message = str(err.value)
    assert str(path) in message and "annotation 11 (image 2)" in message
    assert f"image file {images / '000000000002.jpg'} not found" in message


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    path, images = _write(tmp_path, _dataset())
    corrupt = images / "000000000002.jpg"
    corrupt.write_bytes(np.random.default_rng(0).bytes(500))
    assert coco.check_image(images / "000000000001.jpg") == SIZES[1]
    with pytest.raises(CocoFormatError, match="000000000002.jpg: not a readable image"):
        coco.check_image(corrupt)
    assert len(coco.load_person_keypoints(path, images)) == 2  # existence only unless asked to decode
    with pytest.raises(CocoFormatError) as err:
        coco.load_person_keypoints(path, images, verify_images=True)
    assert "annotation 11 (image 2)" in str(err.value) and str(corrupt) in str(err.value)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_download_coco_fetches_verifies_and_unpacks(tmp_path: Path) -> None:
    source, images = _write(tmp_path / "source", _dataset())
    archives = {
        "annotations_trainval2017.zip": _zip_bytes({f"annotations/{source.name}": source.read_bytes()}),
        "val2017.zip": _zip_bytes({f"val2017/{p.name}": p.read_bytes() for p in sorted(images.iterdir())}),
    }
    catalog = {  # the official URLs, with the checksums of the fake archives
        name: RemoteFile(coco.COCO_FILES[name].url, size=len(data), md5=hashlib.md5(data).hexdigest())
        for name, data in archives.items()
    }
    served = {coco.COCO_FILES[name].url.removeprefix(coco.COCO_BASE_URL): data for name, data in archives.items()}
    root = tmp_path / "coco"
    with serve(served) as server:
        assert coco.download_coco(root, progress=False, base_url=server.url, catalog=catalog) == root
        assert sorted(path for path, _ in server.requests) == sorted(served)
        coco.download_coco(root, progress=False, base_url=server.url, catalog=catalog)  # markers: nothing to do
        assert len(server.requests) == 2
    records = coco.load_person_keypoints(root / "annotations" / source.name, root / "val2017", verify_images=True)
    assert [r.annotation_id for r in records] == [10, 11]
    assert json.loads((root / "val2017.zip.extracted.json").read_text())["files"] == 2
    with pytest.raises(ValueError, match="test2017.zip"):
        coco.download_coco(root, files=["test2017.zip"], progress=False)
