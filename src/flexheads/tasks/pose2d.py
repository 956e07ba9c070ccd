"""The pose2d task: COCO 2017 person keypoints (or the synthetic twin) → 17 keypoints per top-down person crop.

Stage workers, each a function of its inputs and outputs:

* ``download``: synthetic default → ``synthetic_coco.generate``; ``coco`` → the official archives
  (``download_coco``, checksummed) linked into the same layout the generator writes:
  ``images/{train,val}2017/`` and ``annotations/person_keypoints_{train,val}2017.json``.
* ``prepare``: one crop per annotated person, cut around its ground-truth box (top-down, as SimpleBaseline and
  HRNet evaluate with ground-truth boxes) → ``pose2d.h5`` + a JSON of statistics. Every image is decoded once here.
  Groups: ``test`` = val2017 (COCO's labelled evaluation set; test-dev's labels are not public), ``val`` = the
  train2017 images whose id hashes below ``data.pose2d.val_fraction``, ``train`` = the rest of train2017.
* ``build_model``/``training_batches``/``validation``: the keypoint transformer, its step-indexed, augmented
  batches, and the validation split's AP of its validation curves (``val_AP``).
* ``evaluate``: COCO OKS AP/AR (pycocotools) on the test group (val2017), PCKh, PCK, PDJ, PCP, in image pixels,
  and the arrays of the report's figures (attention maps of one crop, predicted and true keypoints of a few).

The crops' geometry (crop ↔ image pixels, its coordinate convention), their cutting and their augmentation are
:mod:`flexheads.data.crops`; the h5 writer of ``prepare`` is :mod:`flexheads.data.pose2d_store`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
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
from flexheads.data.coco import (
    KEYPOINT_NAMES, SKELETON, CocoFormatError, PersonRecord, download_coco, load_person_keypoints,
)
from flexheads.data.crops import CROP_PADDING, FLIP_INDEX, apply_affine, as_input, augment, read_rgb
from flexheads.data.pose2d_store import CropWriter, by_image
from flexheads.data.prepared import open_prepared, read_split, require_validation_split, seal
from flexheads.data.splits import held_out, require_held_out
from flexheads.io import atomic_path, replace_with_symlink, write_json
from flexheads.metrics import keypoint_ap
from flexheads.metrics import pose2d as metrics
from flexheads.models.config import encoder_config
from flexheads.models.pose2d import KeypointPrediction, KeypointTransformer, Pose2DConfig, heatmap_targets
from flexheads.nn.resnet import TORCHVISION_WIDTH
from flexheads.tasks.settings.pose2d import SETTINGS, Pose2DData  # noqa: F401  (SETTINGS: a Task member)
from flexheads.tasks.evaluation import (
    VALIDATION_SAMPLES, attention_record, evenly_spaced, grid_tokens, predict_batches,
)

SPLITS = {"train": "train2017", "val": "train2017", "test": "val2017"}  # h5 group → the COCO split it is cut from
COCO_SPLITS = ("train2017", "val2017")  # the splits download fetches
VAL_SALT = "pose2d/val"  # salt of the image ids' hash (flexheads.data.splits); changing it moves the val split
NAME = "pose2d"
TITLE = "2D human pose estimation"
MAIN_METRIC = "AP"  # higher is better
MAIN_METRIC_UNIT = "OKS, 0–1"
SAMPLE_GROUP = "images"  # samples.npz group: the COCO image id
LOSS_LABEL = "training loss: L1 (crop units) + heatmap CE"  # what keypoint_loss computes, in its units
COCO_ARCHIVES = ("annotations_trainval2017.zip", "train2017.zip", "val2017.zip")
HEATMAP_LOSS_WEIGHT = 1.0  # cross-entropy of the heatmaps to Gaussian targets, next to the coordinates' L1
EXAMPLE_CROPS = 6  # test crops of examples.npz, evenly spaced over the split


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
    for split in COCO_SPLITS:
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

    Groups ``train``/``val``/``test`` (``SPLITS``; :func:`split_records`), one row per person (crowds and people
    without a labelled keypoint are skipped): ``images`` uint8 ``(N, H, W, 3)``; ``keypoints`` float32
    ``(N, 17, 2)`` crop pixels (0 where unlabelled); ``visible`` bool ``(N, 17)`` = COCO ``v > 0``;
    ``keypoints_image`` float32 ``(N, 17, 3)`` the annotation's ``(x, y, v)``; ``affine`` float32 ``(N, 2, 3)``
    crop → image; ``image_id``, ``annotation_id``, ``bbox`` ``(N, 4)`` and ``area``.  ``val/coco_gt_json`` and
    ``test/coco_gt_json`` hold the COCO annotation file of their images (uint8 bytes: train2017's cut to the val
    images, val2017's whole), so validation and evaluation need nothing outside the h5; the model takes its input
    size from the h5's ``crop_size`` attribute.
    """
    raw_dir = Path(raw_dir)
    crop_size = tuple(data.crop_size)
    stats: dict[str, Any] = {"source": data.source, "crop_size": list(crop_size), "padding": CROP_PADDING,
                             "val_fraction": data.val_fraction, "splits": {}}  # fmt: skip
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["keypoint_names"] = list(KEYPOINT_NAMES)
        h5.attrs["crop_size"] = crop_size
        for group_name, (records, gt_bytes) in split_records(raw_dir, data.val_fraction).items():
            group = h5.create_group(group_name)
            writer = CropWriter(group, crop_size)
            image_dir = _image_dir(raw_dir, SPLITS[group_name])
            for image_records in tqdm(by_image(records), desc=f"prepare {group_name}", unit="image", disable=None):
                first = image_records[0]
                image = read_rgb(image_dir / first.file_name, first.image_size)
                for record in image_records:
                    writer.append(image, record)
            stats["splits"][group_name] = writer.close()
            if gt_bytes is not None:
                group.create_dataset("coco_gt_json", data=np.frombuffer(gt_bytes, np.uint8), compression="gzip")
        stats["content_sha256"] = seal(h5, "pose2d")  # checkpoints resume only on this content
    write_json(stats_json, stats)
    return stats


def split_records(raw_dir: Path, val_fraction: float) -> dict[str, tuple[list[PersonRecord], bytes | None]]:
    """Each h5 group's person records (file order) and the COCO annotation file its evaluation reads (None: train).

    ``test``: val2017's people and annotation file; ``val``: the people of the train2017 images whose id is
    :func:`flexheads.data.splits.held_out` with ``val_fraction`` (salt ``VAL_SALT``), train2017's annotation
    file cut to those images; ``train``: the people of the other train2017 images.  ``ParamsError`` naming
    ``data.pose2d.val_fraction`` when it holds out no image (or every image) of train2017.
    """
    loaded = {}
    for split in COCO_SPLITS:
        annotation_json = _annotation_json(raw_dir, split)
        loaded[split] = load_person_keypoints(annotation_json, _image_dir(raw_dir, split))
        if not loaded[split]:
            raise CocoFormatError(f"{annotation_json}: no person with a labelled keypoint to crop")
    pool = loaded[SPLITS["train"]]
    images = {str(record.image_id) for record in pool}
    held = held_out(images, val_fraction, VAL_SALT)
    require_held_out(held, len(images), val_fraction, "data.pose2d.val_fraction", "train2017 images with people",
                     "data.pose2d.synthetic.n_train_images (synthetic data)")
    val = [record for record in pool if str(record.image_id) in held]
    train_gt = _annotation_json(raw_dir, SPLITS["val"]).read_bytes()
    return {
        "train": ([record for record in pool if str(record.image_id) not in held], None),
        "val": (val, _coco_subset(train_gt, np.array([record.image_id for record in val]))),
        "test": (loaded[SPLITS["test"]], _annotation_json(raw_dir, SPLITS["test"]).read_bytes()),
    }


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
    """The validation curves' metric (``val_AP``): COCO ``AP`` (as :func:`evaluate` computes it, flip test as
    configured) of the people of the first images of the validation split, whole images, at most
    ``VALIDATION_SAMPLES`` crops.

    The validation split is the ``data.pose2d.val_fraction`` of the train2017 images held out by image-id hash
    (:func:`split_records`): never trained on, and disjoint from val2017, which evaluation scores as the test set
    (COCO's test-dev labels are not public), so choosing a regime or a step from the curves does not tune on
    test.  Whole images, so that COCOeval sees every labelled person of each (COCO's image order is unrelated to
    content).  The subset's crops and annotations are read once, here.
    """
    require_validation_split(h5_path, "pose2d", "image_id")
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
    """Metrics on the test crops (val2017, the ``test`` group), in original image pixels (each prediction mapped
    back with its crop's affine).

    Flip test follows the model's stored config (``train.pose2d.flip_test`` of its run), so a checkpoint is
    always evaluated as it was configured. Headline: COCOeval's ten OKS stats (``AP`` ... ``ARl``; one detection
    per ground-truth box, scored by the mean heatmap peak), ``pckh50`` (PCKh@0.5, head size from
    ears/eyes/torso), ``pck20`` (PCK@0.2 of the box diagonal), ``pdj20`` (PDJ@0.2), ``pcp50`` (strict PCP@0.5),
    and ``mean_pose_ap``/``mean_pose_pckh``: the mean training pose placed in every crop, the reference a model
    must beat. Tables: ``per_joint`` (PCK, PCKh, PDJ) and ``per_limb`` (PCP), and two dicts of arrays for the
    report's figures, the same crops for every run:

    * ``attention``: the first test crop's encoder self-attention,
      :func:`flexheads.tasks.evaluation.attention_record` with ``tokens`` ``r{row}c{col}`` of the feature grid
      (row-major, no extra tokens), ``grid`` ``(rows, cols)`` and ``image`` the uint8 crop ``(H, W, 3)`` as the
      model sees it (unflipped);
    * ``examples``: ``EXAMPLE_CROPS`` = K test crops evenly spaced over the split: ``images`` uint8
      ``(K, H, W, 3)``, ``pred`` (as evaluated) and ``target`` float32 ``(K, 17, 2)`` crop pixels ``(x, y)``
      (target 0 where unlabelled), ``visible`` bool ``(K, 17)`` (labelled), ``joint_names`` str ``(17,)``,
      ``skeleton`` int64 ``(E, 2)`` COCO's limbs as 0-based keypoint indices;
    * ``samples``: every person's OKS, score and image id (:func:`per_person_samples`), which
      :func:`sample_metric` turns back into ``AP`` for the report's bootstrap.
    """
    test = read_split(h5_path, "pose2d", "test", ("images", "keypoints", "visible", "keypoints_image", "affine",
                                                  "image_id", "annotation_id", "bbox", "coco_gt_json"))
    gt_bytes = test["coco_gt_json"].tobytes()
    height, width = test["images"].shape[1:3]
    to_pixels = np.array([width, height])
    affine = test["affine"].astype(np.float64)
    gt = test["keypoints_image"][..., :2].astype(np.float64)
    visible = test["keypoints_image"][..., 2] > 0

    crop_pred, probabilities = predict_crop_pixels(model, test["images"], batch_size, device)
    pred = apply_affine(affine, crop_pred)
    mean_pose = np.asarray(stats["splits"]["train"]["keypoints_mean"], dtype=np.float64)
    mean_pred = apply_affine(affine, np.broadcast_to(mean_pose * to_pixels, gt.shape))
    head_size = metrics.head_size_from_keypoints(gt, visible)

    ap = model_coco_stats(gt_bytes, test["image_id"], pred, probabilities)
    mean_pose_ap = coco_ap(gt_bytes, test["image_id"], mean_pred, np.ones(len(gt)))["AP"]

    pck = metrics.pck(pred, gt, visible, metrics.bbox_diagonal(test["bbox"]), alpha=0.2)
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
        "test_persons": int(len(gt)),
        "test_images": int(len(np.unique(test["image_id"]))),
    }
    per_joint = pd.DataFrame({
        "keypoint": KEYPOINT_NAMES, "pck20": pck["per_joint"], "pckh50": pckh["per_joint"],
        "pdj20": pdj["per_joint"], "labelled": visible.sum(0),
    })
    per_limb = pd.DataFrame({"limb": list(pcp["per_limb"]), "pcp50": list(pcp["per_limb"].values())})
    shown = evenly_spaced(len(gt), EXAMPLE_CROPS)
    examples = {
        "images": test["images"][shown], "pred": crop_pred[shown].astype(np.float32),
        "target": test["keypoints"][shown].astype(np.float32), "visible": test["visible"][shown],
        "joint_names": np.asarray(KEYPOINT_NAMES, dtype=str), "skeleton": np.asarray(SKELETON, dtype=np.int64) - 1,
    }
    attention = attention_record(model, as_input(test["images"][:1]), device, tokens=grid_tokens(*model.config.grid),
                                 grid=model.config.grid, image=test["images"][0])
    samples = per_person_samples(gt_bytes, test["annotation_id"], test["image_id"], pred, probabilities)
    return headline, {"per_joint": per_joint, "per_limb": per_limb, "examples": examples, "attention": attention,
                      "samples": samples}


def per_person_samples(gt_bytes: bytes, annotation_ids: np.ndarray, image_ids: np.ndarray, pred: np.ndarray,
                       confidences: np.ndarray) -> dict[str, np.ndarray]:
    """``samples.npz`` (one row per evaluated person, one detection each): ``oks`` float64, the OKS of the
    prediction ``pred`` (image pixels) with its own annotation, whose keypoints and area are read from the COCO file
    ``gt_bytes`` as COCOeval reads them; ``score`` float64, the detection's score as :func:`model_coco_stats` gives
    it (mean keypoint confidence); ``group`` int64, the image id (the report's bootstrap resamples whole images)."""
    annotations = {a["id"]: a for a in json.loads(gt_bytes)["annotations"]}
    own = [annotations[int(i)] for i in annotation_ids]
    labels = np.array([a["keypoints"] for a in own], dtype=np.float64).reshape(len(own), len(KEYPOINT_NAMES), 3)
    oks = keypoint_ap.object_keypoint_similarity(pred, labels[..., :2], labels[..., 2] > 0,
                                                 np.array([a["area"] for a in own], dtype=np.float64))
    return {"oks": oks, "score": confidences.mean(-1), "group": np.asarray(image_ids, dtype=np.int64)}


def sample_metric(samples: Mapping[str, np.ndarray]) -> float:
    """``AP`` (MAIN_METRIC) of rows of :func:`per_person_samples`:
    :func:`flexheads.metrics.keypoint_ap.keypoint_ap`, COCOeval's AP of one detection per person."""
    return keypoint_ap.keypoint_ap(samples["oks"], samples["score"], samples["group"])


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
