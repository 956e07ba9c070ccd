"""The pose2d task: COCO 2017 person keypoints (or the synthetic twin) → 17 keypoints per top-down person crop.

Stage workers, each a function of its inputs and outputs:

* ``download``: synthetic default → ``synthetic_coco.generate``; ``coco`` → the official archives
  (``download_coco``, checksummed) linked into the same layout the generator writes:
  ``images/{train,val}2017/`` and ``annotations/person_keypoints_{train,val}2017.json``.
* ``prepare``: one crop per annotated person, cut around its ground-truth box (top-down, as SimpleBaseline and
  HRNet evaluate with ground-truth boxes) → ``pose2d.h5`` + a JSON of statistics. Every image is decoded once here.
* ``build_model``/``training_batches``/``validation``: the keypoint transformer, its step-indexed, augmented
  batches, and the held-out AP of its validation curve.
* ``evaluate``: COCO OKS AP/AR (pycocotools) on val2017, PCKh, PCK, PDJ, PCP, in image pixels, and the arrays of
  the report's figures (attention maps of one crop, predicted and true keypoints of a few).

Coordinates are continuous pixels with ``(0, 0)`` the top-left corner of the top-left pixel, so pixel
``(col, row)`` covers ``[col, col + 1) × [row, row + 1)`` (PIL's resampling convention and the synthetic data's).
A crop is an axis-aligned scale + shift of its image; ``affine`` ``(2, 3)`` maps crop → image:
``[x_img, y_img] = affine[:, :2] @ [x_crop, y_crop] + affine[:, 2]``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from flexheads.config import Pose2DData, RunConfig
from flexheads.data import synthetic_coco
from flexheads.data.prepared import open_prepared, seal
from flexheads.data.coco import (
    FLIP_PAIRS, KEYPOINT_NAMES, SKELETON, CocoFormatError, PersonRecord, download_coco, load_person_keypoints,
)
from flexheads.errors import DataError
from flexheads.io import atomic_path, replace_with_symlink, write_json
from flexheads.metrics import pose2d as metrics
from flexheads.models.pose2d import KeypointPrediction, KeypointTransformer, Pose2DConfig, heatmap_targets
from flexheads.tasks.evaluation import VALIDATION_SAMPLES, attention_record, evenly_spaced, grid_tokens

SPLITS = {"train": "train2017", "val": "val2017"}  # h5 group → COCO split
MAIN_METRIC = "AP"  # higher is better
CROP_PADDING = 1.25  # box side × 1.25 after widening to the crop aspect (SimpleBaseline/HRNet)
COCO_ARCHIVES = ("annotations_trainval2017.zip", "train2017.zip", "val2017.zip")

# Training augmentation, drawn from each step's generator (light: the crops already hold 25% context).
FLIP_PROBABILITY = 0.5
MAX_ROTATION_DEG = 15.0  # uniform in ±15°
MAX_SCALE_CHANGE = 0.15  # zoom uniform in [0.85, 1.15]
HEATMAP_LOSS_WEIGHT = 1.0  # cross-entropy of the heatmaps to Gaussian targets, next to the coordinates' L1
EXAMPLE_CROPS = 6  # val crops of examples.npz, evenly spaced over the split

# Keypoint order of the mirror image: left and right swap.
FLIP_INDEX = np.arange(len(KEYPOINT_NAMES))
for _left, _right in FLIP_PAIRS:
    FLIP_INDEX[[_left, _right]] = _right, _left


# --- download -------------------------------------------------------------------------------------------------


def download(data: Pose2DData, out_dir: Path) -> dict[str, Path]:
    """Fill ``out_dir`` with ``images/{train,val}2017/`` and ``annotations/person_keypoints_{train,val}2017.json``.

    COCO is downloaded into ``data.coco_dir`` (archives kept there, so a rerun verifies instead of fetching) and
    symlinked into ``out_dir``: its 19 GB of images are never copied.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if data.source == "synthetic":
        s = data.synthetic
        return synthetic_coco.generate(out_dir, n_train_images=s.n_train_images, n_val_images=s.n_val_images,
                                       image_size=s.image_size, max_people=s.max_people, seed=s.seed)
    root = download_coco(Path(data.coco_dir), COCO_ARCHIVES)
    files = {}
    for split in SPLITS.values():
        files[f"{split[:-4]}_images"] = replace_with_symlink(root / split, _image_dir(out_dir, split))
        annotations = f"person_keypoints_{split}.json"
        files[f"{split[:-4]}_annotations"] = replace_with_symlink(root / "annotations" / annotations,
                                                      _annotation_json(out_dir, split))
    return files


def _image_dir(raw_dir: Path, split: str) -> Path:
    return raw_dir / "images" / split


def _annotation_json(raw_dir: Path, split: str) -> Path:
    return raw_dir / "annotations" / f"person_keypoints_{split}.json"


# --- crop geometry --------------------------------------------------------------------------------------------


def crop_affine(bbox: np.ndarray, crop_size: tuple[int, int], padding: float = CROP_PADDING) -> np.ndarray:
    """Crop → image affine ``(2, 3)`` of the COCO box ``(x, y, w, h)``: the box centred, widened to the crop's
    aspect ratio, then scaled by ``padding``; ``crop_size`` is ``(H, W)``."""
    height, width = crop_size
    x, y, w, h = (float(v) for v in bbox)
    w_box, h_box = max(w, 1.0), max(h, 1.0)  # a degenerate box still gets a crop around its centre
    if w_box > h_box * width / height:
        h_box = w_box * height / width
    scale = padding * h_box / height  # image pixels per crop pixel, the same along x and y
    return np.array([[scale, 0.0, x + w / 2 - scale * width / 2],
                     [0.0, scale, y + h / 2 - scale * height / 2]])  # fmt: skip


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``affine (..., 2, 3)`` applied to ``points (..., K, 2)`` → ``(..., K, 2)``."""
    return points @ np.swapaxes(affine[..., :2], -1, -2) + affine[..., None, :, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse map of ``affine (..., 2, 3)``."""
    linear = np.linalg.inv(affine[..., :2])
    return np.concatenate([linear, -(linear @ affine[..., 2:])], axis=-1)


def crop_image(image: Image.Image, affine: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
    """The crop ``(H, W, 3)`` uint8 whose pixel ``(col, row)`` shows the image around ``affine @ (col + .5,
    row + .5)``; outside the image is black.

    An antialiased bilinear resize (PIL's ``resize`` with a sub-pixel ``box``) of a zero-padded region, which for
    the scale + shift of :func:`crop_affine` is the affine warp without its aliasing when a crop shrinks a person.
    """
    height, width = crop_size
    scale, x0, y0 = affine[0, 0], affine[0, 2], affine[1, 2]
    if affine[0, 1] or affine[1, 0] or not math.isclose(affine[1, 1], scale):
        raise ValueError(f"crop_image takes an axis-aligned, isotropic scale + shift, got {affine.tolist()}")
    x1, y1 = x0 + scale * width, y0 + scale * height
    margin = math.ceil(scale) + 1  # the resampling filter's reach (1 crop pixel), so no edge is renormalised
    left, top = math.floor(x0) - margin, math.floor(y0) - margin
    region = image.crop((left, top, math.ceil(x1) + margin, math.ceil(y1) + margin))  # zero-filled outside
    box = (x0 - left, y0 - top, x1 - left, y1 - top)
    return np.asarray(region.resize((width, height), Image.Resampling.BILINEAR, box=box))


def _read_rgb(path: Path, size: tuple[int, int]) -> Image.Image:
    """Decode ``path`` completely as RGB; ``CocoFormatError`` naming it if it is unreadable or not ``size``."""
    try:
        with Image.open(path) as image:
            image.load()  # decode every pixel here: a truncated file fails now, naming its path
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CocoFormatError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if rgb.size != size:
        raise CocoFormatError(f"{path} is {rgb.size[0]}x{rgb.size[1]}, the annotation file says {size[0]}x{size[1]}")
    return rgb


# --- prepare --------------------------------------------------------------------------------------------------


def prepare(data: Pose2DData, raw_dir: Path, out_h5: Path, stats_json: Path) -> dict[str, Any]:
    """Cut one ``data.crop_size`` (H, W) crop per annotated person into ``out_h5``; statistics into ``stats_json``.

    Groups ``train``/``val``, one row per person (crowds and people without a labelled keypoint are skipped):
    ``images`` uint8 ``(N, H, W, 3)``; ``keypoints`` float32 ``(N, 17, 2)`` crop pixels (0 where unlabelled);
    ``visible`` bool ``(N, 17)`` = COCO ``v > 0``; ``keypoints_image`` float32 ``(N, 17, 3)`` the annotation's
    ``(x, y, v)``; ``affine`` float32 ``(N, 2, 3)`` crop → image; ``image_id``, ``annotation_id``, ``bbox``
    ``(N, 4)`` and ``area``.  ``val/coco_gt_json`` holds the val annotation file's bytes (uint8), so evaluation
    needs nothing outside the h5; the model takes its input size from the h5's ``crop_size`` attribute.
    """
    raw_dir = Path(raw_dir)
    crop_size = tuple(data.crop_size)
    stats: dict[str, Any] = {"source": data.source, "crop_size": list(crop_size), "padding": CROP_PADDING,
                             "splits": {}}  # fmt: skip
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["keypoint_names"] = list(KEYPOINT_NAMES)
        h5.attrs["crop_size"] = crop_size
        for group_name, split in SPLITS.items():
            annotation_json = _annotation_json(raw_dir, split)
            records = load_person_keypoints(annotation_json, _image_dir(raw_dir, split))
            if not records:
                raise CocoFormatError(f"{annotation_json}: no person with a labelled keypoint to crop")
            group = h5.create_group(group_name)
            writer = _CropWriter(group, crop_size)
            for image_records in tqdm(_by_image(records), desc=f"prepare {group_name}", unit="image", disable=None):
                first = image_records[0]
                image = _read_rgb(_image_dir(raw_dir, split) / first.file_name, first.image_size)
                for record in image_records:
                    writer.append(image, record)
            stats["splits"][group_name] = writer.close()
            if group_name == "val":
                group.create_dataset("coco_gt_json", data=np.frombuffer(annotation_json.read_bytes(), np.uint8),
                                     compression="gzip")
        stats["content_sha256"] = seal(h5, "pose2d")  # checkpoints resume only on this content
    write_json(stats_json, stats)
    return stats


def _by_image(records: list[PersonRecord]) -> list[list[PersonRecord]]:
    """Records grouped by image, in order of first appearance (each image is decoded once)."""
    groups: dict[int, list[PersonRecord]] = {}
    for record in records:
        groups.setdefault(record.image_id, []).append(record)
    return list(groups.values())


class _CropWriter:
    """Appends crops in blocks to the resizable, chunked datasets of one split group, and summarises them."""

    BLOCK = 256  # rows buffered between writes

    def __init__(self, group: h5py.Group, crop_size: tuple[int, int]) -> None:
        self.group, self.crop_size = group, crop_size
        self.buffer: dict[str, list[np.ndarray]] = {}
        self.rows = 0
        self.images: set[int] = set()
        self.labelled = np.zeros(len(KEYPOINT_NAMES))  # per keypoint: rows where v > 0
        self.sum_xy = np.zeros((len(KEYPOINT_NAMES), 2))  # and the sum of their normalised crop coordinates

    def append(self, image: Image.Image, record: PersonRecord) -> None:
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
            block = np.stack(values)
            if name not in self.group:
                chunk_rows = 16 if name == "images" else 4096  # images: ~0.6 MB chunks at 128×96
                self.group.create_dataset(name, shape=(0, *block.shape[1:]), maxshape=(None, *block.shape[1:]),
                                          dtype=block.dtype, chunks=(chunk_rows, *block.shape[1:]), compression="gzip")
            dataset = self.group[name]
            dataset.resize(self.rows + n, axis=0)
            dataset[self.rows :] = block
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
            "labelled_fraction": dict(zip(KEYPOINT_NAMES, (self.labelled / self.rows).round(4).tolist())),
            "keypoints_mean": mean_pose.round(6).tolist(),
        }


# --- training -------------------------------------------------------------------------------------------------


def _read_split(h5_path: Path, split: str, names: Iterable[str]) -> dict[str, np.ndarray]:
    with open_prepared(h5_path, "pose2d") as h5:
        if split not in h5:
            raise DataError(f"{h5_path}: no '{split}' group; rerun `flexheads prepare pose2d`")
        return {name: h5[split][name][:] for name in names}


ARCHITECTURES = {  # class name saved in model.pt → its constructor (a saved model never fetches weights)
    "KeypointTransformer": lambda config: KeypointTransformer(Pose2DConfig(**config), load_pretrained=False),
}


def build_model(config: RunConfig, h5_path: Path) -> KeypointTransformer:
    """The run's keypoint transformer, sized for the crops ``prepare`` wrote (``data.pose2d.crop_size``)."""
    m = config.model
    with open_prepared(h5_path, "pose2d") as h5:
        crop_size = tuple(int(v) for v in h5.attrs["crop_size"])
    return KeypointTransformer(Pose2DConfig(
        input_size=crop_size, backbone=m.backbone, backbone_stride=m.backbone_stride, pretrained=m.pretrained,
        d_model=m.d_model, n_heads=m.n_heads, d_head=config.d_head, n_layers=m.n_layers, d_ff=m.d_ff,
        dropout=m.dropout, activation=m.activation,
        norm=config.regime.norm, init=config.regime.init, flip_test=config.train.flip_test,
    ))


def augment(rng: np.random.Generator, images: np.ndarray, keypoints: np.ndarray,
            visible: np.ndarray) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Random mirror, rotation about the crop centre and zoom, drawn from ``rng``.

    Args:
        images: uint8 ``(B, H, W, 3)``. keypoints: ``(B, 17, 2)`` crop pixels. visible: bool ``(B, 17)``.
    Returns:
        float images ``(B, 3, H, W)`` in [0, 1] (bilinear, black outside the crop), keypoints in the new crops'
        pixels (left/right swapped where mirrored) and ``visible`` without keypoints that left the crop.
    """
    b, height, width = images.shape[:3]
    flip = rng.random(b) < FLIP_PROBABILITY
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, b))
    zoom = rng.uniform(1 - MAX_SCALE_CHANGE, 1 + MAX_SCALE_CHANGE, b)
    # output → source pixels: about the centre c, src = c + R(-angle) (out - c) / zoom, then mirrored: x → W - x
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    linear[flip, 0] *= -1
    centre = np.array([width / 2, height / 2])
    out_to_src = np.concatenate([linear, (centre - linear @ centre)[..., None]], axis=-1)  # (B, 2, 3)

    rows, cols = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    src = apply_affine(out_to_src, np.stack([cols, rows], -1).reshape(-1, 2)[None])  # (B, H*W, 2) source pixels
    grid = torch.from_numpy((src / [width, height] * 2 - 1).reshape(b, height, width, 2).astype(np.float32))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    moved = apply_affine(invert_affine(out_to_src), keypoints.astype(np.float64))
    moved[flip] = moved[flip][:, FLIP_INDEX]
    visible = np.where(flip[:, None], visible[:, FLIP_INDEX], visible)
    inside = (moved >= 0).all(-1) & (moved[..., 0] < width) & (moved[..., 1] < height)
    return warped, moved, visible & inside


def keypoint_loss(prediction: KeypointPrediction, target: Tensor, visible: Tensor, heatmap_target: Tensor) -> Tensor:
    """Over the visible keypoints: mean ``|pred - target|`` per coordinate (normalised crop units, so 0.01 is
    ~1 crop pixel) + ``HEATMAP_LOSS_WEIGHT`` × mean cross-entropy ``-sum_t q_kt log softmax_t(h_kt)`` of the
    heatmaps to their Gaussian targets (which speeds learning up several-fold over the L1 alone)."""
    mask = visible.to(target.dtype)
    l1 = ((prediction.coords - target).abs().sum(-1) * mask).sum() / (2 * mask.sum()).clamp(min=1)
    cross_entropy = -(heatmap_target * prediction.heatmaps.log_softmax(-1)).sum(-1)
    return l1 + HEATMAP_LOSS_WEIGHT * (cross_entropy * mask).sum() / mask.sum().clamp(min=1)


def training_batches(
    h5_path: Path, config: RunConfig
) -> tuple[Callable[[int], tuple[Tensor, Tensor, Tensor]], Callable[[nn.Module, Any], Tensor]]:
    """``batch_at(step)`` (a pure function of seed and step) and :func:`keypoint_loss`.

    The train crops are held in memory as uint8 (36 KB each at 128×96: ~5.5 GB for COCO train2017's 150k people).
    A batch is ``(images (B, 3, H, W) in [0, 1], keypoints (B, 17, 2) normalised, visible (B, 17))``.
    """
    train = _read_split(h5_path, "train", ("images", "keypoints", "visible"))
    n, height, width = train["images"].shape[:3]
    batch_size = config.train.batch_size

    def batch_at(step: int) -> tuple[Tensor, Tensor, Tensor]:
        rng = np.random.default_rng([config.seed, step])
        rows = np.sort(rng.choice(n, size=batch_size, replace=n < batch_size))
        images, keypoints, visible = augment(rng, train["images"][rows], train["keypoints"][rows],
                                             train["visible"][rows])
        target = torch.from_numpy((keypoints / [width, height]).astype(np.float32))
        return images, target, torch.from_numpy(visible)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        images, target, visible = batch
        prediction = model.predict(images)
        return keypoint_loss(prediction, target, visible, heatmap_targets(target, model.config, model.cell_centres))

    return batch_at, loss_fn


# --- evaluation -----------------------------------------------------------------------------------------------


def _as_input(images: np.ndarray) -> Tensor:
    """uint8 crops ``(B, H, W, 3)`` → the model's input ``(B, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict(model: KeypointTransformer, images: np.ndarray, batch_size: int, device: torch.device,
            flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crop coordinates ``(N, 17, 2)`` and confidences (heatmap peaks) ``(N, 17)`` of uint8 crops
    ``(N, H, W, 3)``; with ``flip_test`` the average over each crop and its mirror image (mapped back)."""
    model.eval().to(device)
    mirror_index = torch.from_numpy(FLIP_INDEX).to(device)
    coords, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = _as_input(images[start : start + batch_size]).to(device)  # (B, 3, H, W)
        views = [batch, batch.flip(-1)] if flip_test else [batch]
        xy, p = [], []
        for view, mirrored in zip(views, (False, True)):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model.predict(view)
            c, v = out.coords.float(), out.confidence.float()
            if mirrored:  # x → 1 - x and left ↔ right undo the mirror
                c = torch.stack([1 - c[..., 0], c[..., 1]], -1)[:, mirror_index]
                v = v[:, mirror_index]
            xy.append(c)
            p.append(v)
        coords.append(torch.stack(xy).mean(0).cpu().numpy())
        probabilities.append(torch.stack(p).mean(0).cpu().numpy())
    return np.concatenate(coords).astype(np.float64), np.concatenate(probabilities).astype(np.float64)


def predict_crop_pixels(model: KeypointTransformer, images: np.ndarray, batch_size: int,
                        device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict` as evaluation runs it (flip test as the model's config says): keypoints ``(N, 17, 2)`` in
    crop pixels and their confidences ``(N, 17)``."""
    coords, probabilities = predict(model, images, batch_size, device, model.config.flip_test)
    height, width = images.shape[1:3]
    return coords * [width, height], probabilities


def coco_ap(gt_bytes: bytes, image_ids: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
            confidences: np.ndarray | None = None) -> dict[str, float]:
    """COCOeval keypoint stats of one detection per person (``keypoints (N, 17, 2)`` image pixels) against the
    COCO annotation file ``gt_bytes``."""
    with tempfile.TemporaryDirectory(prefix="pose2d-eval-") as tmp:
        gt_json, results = Path(tmp) / "person_keypoints_val2017.json", Path(tmp) / "results.json"
        gt_json.write_bytes(gt_bytes)
        metrics.write_coco_results(results, image_ids, keypoints, scores, confidences)
        return metrics.coco_keypoint_ap(gt_json, results)


def model_coco_stats(gt_bytes: bytes, image_ids: np.ndarray, keypoints: np.ndarray,
                     confidences: np.ndarray) -> dict[str, float]:
    """:func:`coco_ap` of the model's detections, each person scored by the mean of its keypoint confidences."""
    return coco_ap(gt_bytes, image_ids, keypoints, confidences.mean(-1), confidences)


def _first_images(image_ids: np.ndarray, max_rows: int) -> int:
    """How many leading rows hold the most whole images (an image's crops are consecutive) within ``max_rows``
    rows; all of the first image's rows if even that one has more."""
    ends = np.append(np.flatnonzero(image_ids[1:] != image_ids[:-1]) + 1, len(image_ids))  # one past each image
    fitting = ends[ends <= max_rows]
    return int(fitting[-1] if len(fitting) else ends[0])


def _coco_subset(gt_bytes: bytes, image_ids: np.ndarray) -> bytes:
    """The COCO annotation file ``gt_bytes`` reduced to the images ``image_ids`` and their annotations."""
    gt = json.loads(gt_bytes)
    kept = {int(i) for i in image_ids}
    gt["images"] = [image for image in gt["images"] if image["id"] in kept]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in kept]
    return json.dumps(gt).encode()


def validation(h5_path: Path, config: RunConfig) -> Callable[[nn.Module, torch.device], float]:
    """The validation curve's metric: COCO ``AP`` (as :func:`evaluate` computes it, flip test as configured) of
    the people of the first val2017 images, whole images, at most ``VALIDATION_SAMPLES`` crops.

    pose2d.h5 has no validation split: evaluation scores val2017 as the test set (COCO's test-dev labels are
    not public) and holding train2017 images out would change what every run learns from.  So the curve
    scores a fixed subset of val2017, whole images so that COCOeval sees every labelled person of each (COCO's
    image order is unrelated to content).  It only draws curves: nothing is chosen on it (no early stopping,
    no checkpoint selection).  The subset's crops and annotations are read once, here.
    """
    with open_prepared(h5_path, "pose2d") as h5:
        val = h5["val"]
        n = _first_images(val["image_id"][:], VALIDATION_SAMPLES)
        images, affine, image_ids = val["images"][:n], val["affine"][:n].astype(np.float64), val["image_id"][:n]
        gt_bytes = _coco_subset(val["coco_gt_json"][:].tobytes(), image_ids)
    batch_size = config.train.eval_batch_size

    def validate(model: nn.Module, device: torch.device) -> float:
        keypoints, confidences = predict_crop_pixels(model, images, batch_size, device)
        return model_coco_stats(gt_bytes, image_ids, apply_affine(affine, keypoints), confidences)["AP"]

    return validate


def evaluate(model: nn.Module, h5_path: Path, stats: dict[str, Any], batch_size: int,
             device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics on the val crops, in original image pixels (each prediction mapped back with its crop's affine).

    Flip test follows the model's stored config (``train.pose2d.flip_test`` of its run), so a checkpoint is
    always evaluated as it was configured. Headline: COCOeval's ten OKS stats (``AP`` ... ``ARl``; one detection
    per ground-truth box, scored by the mean heatmap peak), ``pckh50`` (PCKh@0.5, head size from
    ears/eyes/torso), ``pck20`` (PCK@0.2 of the box diagonal), ``pdj20`` (PDJ@0.2), ``pcp50`` (strict PCP@0.5),
    and ``mean_pose_ap``/``mean_pose_pckh``: the mean training pose placed in every crop, the reference a model
    must beat. Tables: ``per_joint`` (PCK, PCKh, PDJ) and ``per_limb`` (PCP), and two dicts of arrays for the
    report's figures, the same crops for every run:

    * ``attention``: the first val crop's encoder self-attention,
      :func:`flexheads.tasks.evaluation.attention_record` with ``tokens`` ``r{row}c{col}`` of the feature grid
      (row-major, no extra tokens), ``grid`` ``(rows, cols)`` and ``image`` the uint8 crop ``(H, W, 3)`` as the
      model sees it (unflipped);
    * ``examples``: ``EXAMPLE_CROPS`` = K val crops evenly spaced over the split: ``images`` uint8
      ``(K, H, W, 3)``, ``pred`` (as evaluated) and ``target`` float32 ``(K, 17, 2)`` crop pixels ``(x, y)``
      (target 0 where unlabelled), ``visible`` bool ``(K, 17)`` (labelled), ``joint_names`` str ``(17,)``,
      ``skeleton`` int64 ``(E, 2)`` COCO's limbs as 0-based keypoint indices.
    """
    val = _read_split(h5_path, "val", ("images", "keypoints", "visible", "keypoints_image", "affine", "image_id",
                                       "bbox"))
    with open_prepared(h5_path, "pose2d") as h5:
        gt_bytes = h5["val"]["coco_gt_json"][:].tobytes()
    height, width = val["images"].shape[1:3]
    to_pixels = np.array([width, height])
    affine = val["affine"].astype(np.float64)
    gt = val["keypoints_image"][..., :2].astype(np.float64)
    visible = val["keypoints_image"][..., 2] > 0

    crop_pred, probabilities = predict_crop_pixels(model, val["images"], batch_size, device)
    pred = apply_affine(affine, crop_pred)
    mean_pose = np.asarray(stats["splits"]["train"]["keypoints_mean"], dtype=np.float64)
    mean_pred = apply_affine(affine, np.broadcast_to(mean_pose * to_pixels, gt.shape))
    head_size = metrics.head_size_from_keypoints(gt, visible)

    ap = model_coco_stats(gt_bytes, val["image_id"], pred, probabilities)
    mean_pose_ap = coco_ap(gt_bytes, val["image_id"], mean_pred, np.ones(len(gt)))["AP"]

    pck = metrics.pck(pred, gt, visible, metrics.bbox_diagonal(val["bbox"]), alpha=0.2)
    pckh = metrics.pckh(pred, gt, visible, head_size, alpha=0.5)
    pdj = metrics.pdj(pred, gt, visible, alpha=0.2)
    pcp = metrics.pcp(pred, gt, visible, alpha=0.5)
    headline = {
        **ap,
        "pckh50": pckh["overall"],
        "pck20": pck["overall"],
        "pdj20": pdj["overall"],
        "pcp50": pcp["overall"],
        "mean_pose_ap": mean_pose_ap,
        "mean_pose_pckh": metrics.pckh(mean_pred, gt, visible, head_size, alpha=0.5)["overall"],
        "val_persons": int(len(gt)),
        "val_images": int(len(np.unique(val["image_id"]))),
    }
    per_joint = pd.DataFrame({
        "keypoint": KEYPOINT_NAMES, "pck20": pck["per_joint"], "pckh50": pckh["per_joint"],
        "pdj20": pdj["per_joint"], "labelled": visible.sum(0),
    })
    per_limb = pd.DataFrame({"limb": list(pcp["per_limb"]), "pcp50": list(pcp["per_limb"].values())})
    shown = evenly_spaced(len(gt), EXAMPLE_CROPS)
    examples = {
        "images": val["images"][shown], "pred": crop_pred[shown].astype(np.float32),
        "target": val["keypoints"][shown].astype(np.float32), "visible": val["visible"][shown],
        "joint_names": np.asarray(KEYPOINT_NAMES, dtype=str), "skeleton": np.asarray(SKELETON, dtype=np.int64) - 1,
    }
    attention = attention_record(model, _as_input(val["images"][:1]), device, tokens=grid_tokens(*model.config.grid),
                                 grid=model.config.grid, image=val["images"][0])
    return headline, {"per_joint": per_joint, "per_limb": per_limb, "examples": examples, "attention": attention}


REPORT_CAPTION = (
    "pose2d (COCO val2017 person keypoints, top-down crops of the ground-truth boxes): OKS AP/AR by COCOeval; "
    "PCKh@0.5 with the head size estimated from ears, eyes or torso; PCK@0.2 of the box diagonal; strict PCP@0.5. "
    "Fractions in [0, 1], higher is better."
)
REPORT_COLUMNS = [  # (key in metrics/<run>.json, header, better)
    ("AP", "AP", "max"),
    ("AP50", "AP50", "max"),
    ("AP75", "AP75", "max"),
    ("AR", "AR", "max"),
    ("pckh50", "PCKh@0.5", "max"),
    ("pck20", "PCK@0.2", "max"),
    ("pcp50", "PCP", "max"),
]
REPORT_BREAKDOWNS = [  # (metrics/<run>/<name>.csv, key column, value column, label, better)
    ("per_joint", "keypoint", "pckh50", "PCKh@0.5", "max"),
]
