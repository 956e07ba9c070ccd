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

The crops' geometry (crop ↔ image pixels, its coordinate convention), their cutting and their augmentation are
:mod:`flexheads.data.crops`; the h5 writer of ``prepare`` is :mod:`flexheads.data.pose2d_store`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flexheads.config import RunConfig
from flexheads.data import synthetic_coco
from flexheads.data.coco import KEYPOINT_NAMES, SKELETON, CocoFormatError, download_coco, load_person_keypoints
from flexheads.data.crops import CROP_PADDING, FLIP_INDEX, apply_affine, as_input, augment, read_rgb
from flexheads.data.pose2d_store import CropWriter, by_image
from flexheads.data.prepared import open_prepared, read_split, seal
from flexheads.io import atomic_path, replace_with_symlink, write_json
from flexheads.metrics import pose2d as metrics
from flexheads.models.config import encoder_config
from flexheads.models.pose2d import KeypointPrediction, KeypointTransformer, Pose2DConfig, heatmap_targets
from flexheads.nn.resnet import TORCHVISION_WIDTH
from flexheads.tasks.settings.pose2d import SETTINGS, Pose2DData  # noqa: F401  (SETTINGS: a Task member)
from flexheads.tasks.evaluation import (
    VALIDATION_SAMPLES, attention_record, evenly_spaced, grid_tokens, predict_batches,
)

SPLITS = {"train": "train2017", "val": "val2017"}  # h5 group → COCO split
NAME = "pose2d"
TITLE = "2D human pose estimation"
MAIN_METRIC = "AP"  # higher is better
MAIN_METRIC_UNIT = "OKS, 0–1"
LOSS_LABEL = "training loss: L1 (crop units) + heatmap CE"  # what keypoint_loss computes, in its units
COCO_ARCHIVES = ("annotations_trainval2017.zip", "train2017.zip", "val2017.zip")
HEATMAP_LOSS_WEIGHT = 1.0  # cross-entropy of the heatmaps to Gaussian targets, next to the coordinates' L1
EXAMPLE_CROPS = 6  # val crops of examples.npz, evenly spaced over the split


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
            writer = CropWriter(group, crop_size)
            for image_records in tqdm(by_image(records), desc=f"prepare {group_name}", unit="image", disable=None):
                first = image_records[0]
                image = read_rgb(_image_dir(raw_dir, split) / first.file_name, first.image_size)
                for record in image_records:
                    writer.append(image, record)
            stats["splits"][group_name] = writer.close()
            if group_name == "val":
                group.create_dataset("coco_gt_json", data=np.frombuffer(annotation_json.read_bytes(), np.uint8),
                                     compression="gzip")
        stats["content_sha256"] = seal(h5, "pose2d")  # checkpoints resume only on this content
    write_json(stats_json, stats)
    return stats


# --- training -------------------------------------------------------------------------------------------------


ARCHITECTURES = {  # class name saved in model.pt → its constructor (a saved model never fetches weights)
    "KeypointTransformer": lambda config: KeypointTransformer(
        Pose2DConfig.from_dict({"trunk_width": TORCHVISION_WIDTH, **config}),  # saved before trunk_width existed
        load_pretrained=False),
}


def build_model(config: RunConfig, h5_path: Path) -> KeypointTransformer:
    """The run's keypoint transformer, sized for the crops ``prepare`` wrote (``data.pose2d.crop_size``).

    With ``train.pose2d.channels_last`` the 4D weights of the CNN trunk and of the 1×1 ``embed`` convolution are
    stored in ``torch.channels_last`` (NHWC, the layout of cuDNN's fastest convolutions, which the training loss
    gives its crops too): the same values in another memory order, for training only (a model loaded from
    ``model.pt`` is built in the default layout).
    """
    m = config.model
    with open_prepared(h5_path, "pose2d") as h5:
        crop_size = tuple(int(v) for v in h5.attrs["crop_size"])
    model = KeypointTransformer(Pose2DConfig(
        n_keypoints=len(KEYPOINT_NAMES), input_size=crop_size, backbone=m.backbone, backbone_stride=m.backbone_stride,
        pretrained=m.pretrained, trunk_width=m.trunk_width, flip_test=config.train.flip_test,
        encoder=encoder_config(config),
    ))
    if config.train.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
        model.embed.to(memory_format=torch.channels_last)
    return model


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
    A batch is ``(images (B, 3, H, W) in [0, 1], keypoints (B, 17, 2) normalised, visible (B, 17))``; with
    ``train.pose2d.channels_last`` the loss hands the model its images in ``torch.channels_last`` (see
    :func:`build_model`).
    """
    train = read_split(h5_path, "pose2d", "train", ("images", "keypoints", "visible"))
    n, height, width = train["images"].shape[:3]
    batch_size = config.train.batch_size
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format

    def batch_at(step: int) -> tuple[Tensor, Tensor, Tensor]:
        rng = np.random.default_rng([config.seed, step])
        rows = np.sort(rng.choice(n, size=batch_size, replace=n < batch_size))
        images, keypoints, visible = augment(rng, train["images"][rows], train["keypoints"][rows],
                                             train["visible"][rows])
        target = torch.from_numpy((keypoints / [width, height]).astype(np.float32))
        return images, target, torch.from_numpy(visible)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        images, target, visible = batch
        prediction = model.predict(images.contiguous(memory_format=memory_format))
        return keypoint_loss(prediction, target, visible, heatmap_targets(target, model.config, model.cell_centres))

    return batch_at, loss_fn


# --- evaluation -----------------------------------------------------------------------------------------------


def predict(model: KeypointTransformer, images: np.ndarray, batch_size: int, device: torch.device,
            flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crop coordinates ``(N, 17, 2)`` and confidences (heatmap peaks) ``(N, 17)`` of uint8 crops
    ``(N, H, W, 3)``; with ``flip_test`` the average over each crop and its mirror image (mapped back)."""
    mirror_index = torch.from_numpy(FLIP_INDEX).to(device)

    def views(model: nn.Module, batch: Tensor) -> list[KeypointPrediction]:
        """The predictions of a batch ``(B, 3, H, W)`` and, with flip test, of its mirror image."""
        return [model.predict(view) for view in ([batch, batch.flip(-1)] if flip_test else [batch])]

    batches = (as_input(images[start : start + batch_size]) for start in range(0, len(images), batch_size))
    coords, probabilities = [], []
    for outputs in predict_batches(model, batches, device, views):
        xy, p = [], []
        for out, mirrored in zip(outputs, (False, True)):
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
    val = read_split(h5_path, "pose2d", "val", ("images", "keypoints", "visible", "keypoints_image", "affine",
                                                 "image_id", "bbox", "coco_gt_json"))
    gt_bytes = val["coco_gt_json"].tobytes()
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
    attention = attention_record(model, as_input(val["images"][:1]), device, tokens=grid_tokens(*model.config.grid),
                                 grid=model.config.grid, image=val["images"][0])
    return headline, {"per_joint": per_joint, "per_limb": per_limb, "examples": examples, "attention": attention}


REPORT_FIGURES = (  # (suffix, kind): figure pose2d_<suffix>, drawn by the report's figure kind <kind>
    ("skeletons", "skeletons_2d"),
    ("per_joint", "per_joint"),
)
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
