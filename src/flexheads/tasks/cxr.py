"""The cxr task: a chest radiograph → 15 findings (ChestX-ray14's 14 and COVID-19), multi-label.

Stage workers, each a function of its inputs and outputs:

* ``download``: synthetic default → ``synthetic_cxr.generate`` (both sources' layouts plus lesion masks); ``nih`` →
  ChestX-ray14 into ``data.cxr.nih_dir`` and, with ``include_covid``, the covid-chestxray-dataset into
  ``data.cxr.covid_dir`` (both verified, see ``flexheads.data.cxr``), symlinked into the same layout; ``folder`` →
  the user's images and labels CSV, checked and symlinked.  The raw layout (``out_dir``)::

      chestxray14/               images/*.png, Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt,
                                 BBox_List_2017.csv, masks/*.npz (synthetic only)
      covid-chestxray-dataset/   metadata.csv, images/*, masks/*.npz (synthetic only)
      folder/                    images/*, labels.csv (+ train_val_list.txt, test_list.txt when given)

* ``prepare``: every image decoded once, to grayscale, centre-cropped to a square and resized to
  ``data.image_size`` → ``cxr.h5`` (splits ``train``/``val``/``test`` by patient) + a JSON of statistics.
* ``build_model``/``training_batches``/``validation``: the ViT, its step-indexed, augmented batches (BCE,
  optionally class-weighted), and the held-out mean AUROC of its validation curve.
* ``evaluate``: AUROC, AP, F1/sensitivity/specificity at thresholds chosen on validation, per finding; with lesion
  masks (synthetic data) also Grad-CAM localisation (pointing game, IoU) against a uniform map; the attention maps
  of one test radiograph for the report.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from flexheads.config import CxrData, RunConfig
from flexheads.data import synthetic_cxr
from flexheads.data.prepared import open_prepared, seal
from flexheads.data.cxr import (
    COVID_DIR, COVID_IMAGES_DIR, COVID_METADATA, COVID_TEST_FRACTION, FOLDER_DIR, LABELS, MASKS_DIR, NIH_BBOX_CSV,
    NIH_CSV, NIH_DIR, NIH_IMAGES_DIR, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST, SPLITS, CxrFormatError,
    check_patients_disjoint, download_covid, download_nih, folder_splits, hashed_splits, nih_splits,
    read_covid_metadata, read_folder_entries, read_nih_entries,
)
from flexheads.errors import DataError
from flexheads.io import atomic_path, replace_with_symlink, write_json
from flexheads.metrics import classification
from flexheads.metrics import localisation as localisation_metrics
from flexheads.models.vit import VisionTransformer, ViTConfig
from flexheads.tasks.evaluation import VALIDATION_SAMPLES, attention_record, evenly_spaced, grid_tokens

FOLDER_LABELS = "labels.csv"
CHUNK_ROWS = 64  # images per HDF5 chunk: 256 KB at 64x64
BLOCK_ROWS = 256  # images decoded (in parallel) and written per block
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing


# --- download -------------------------------------------------------------------------------------------------


def download(data: CxrData, out_dir: Path) -> dict[str, Path]:
    """Fill ``out_dir`` with the raw layout of ``data.source`` (module docstring); returns the paths by kind.

    Real images are never copied: ChestX-ray14's 45 GB stay in ``data.nih_dir`` and are symlinked.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if data.source == "synthetic":
        s = data.synthetic
        return synthetic_cxr.generate(out_dir, n_patients=s.n_patients, n_covid_images=s.n_covid_images,
                                      image_size=s.image_size, seed=s.seed)
    for stale in (out_dir / NIH_DIR / MASKS_DIR, out_dir / COVID_DIR / MASKS_DIR):  # a synthetic run's masks
        _remove(stale)
    if data.source == "folder":
        return _link_folder(data, out_dir / FOLDER_DIR)
    root = download_nih(Path(data.nih_dir))
    files = {"nih_images": replace_with_symlink(root / NIH_IMAGES_DIR, out_dir / NIH_DIR / NIH_IMAGES_DIR)}
    for kind, name in (("nih_entries", NIH_CSV), ("nih_train_val", NIH_TRAIN_VAL_LIST), ("nih_test", NIH_TEST_LIST),
                       ("nih_boxes", NIH_BBOX_CSV)):
        files[kind] = replace_with_symlink(root / name, out_dir / NIH_DIR / name)
    if data.include_covid:
        repo = download_covid(Path(data.covid_dir))
        files["covid_images"] = replace_with_symlink(repo / COVID_IMAGES_DIR, out_dir / COVID_DIR / COVID_IMAGES_DIR)
        files["covid_metadata"] = replace_with_symlink(repo / COVID_METADATA, out_dir / COVID_DIR / COVID_METADATA)
    return files


def _link_folder(data: CxrData, dst: Path) -> dict[str, Path]:
    """Check a user's folder (labels CSV readable, every listed image present) and symlink it into ``dst``."""
    images, labels = Path(data.folder.images), Path(data.folder.labels_csv)
    if not images.is_dir():
        raise CxrFormatError(f"{images}: image folder not found (data.cxr.folder.images)")
    entries = read_folder_entries(labels)
    missing = [name for name in entries["Image Index"] if not (images / name).is_file()]
    if missing:
        raise CxrFormatError(f"{labels}: {len(missing)} listed image(s) missing from {images}, e.g. {missing[:5]}")
    files = {"folder_images": replace_with_symlink(images, dst / NIH_IMAGES_DIR),
             "folder_labels": replace_with_symlink(labels, dst / FOLDER_LABELS)}
    for name in (NIH_TRAIN_VAL_LIST, NIH_TEST_LIST):
        if (labels.parent / name).is_file():
            files[f"folder_{Path(name).stem}"] = replace_with_symlink(labels.parent / name, dst / name)
        else:
            _remove(dst / name)
    return files


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- records --------------------------------------------------------------------------------------------------


def _records(data: CxrData, raw_dir: Path) -> pd.DataFrame:
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


# --- images ---------------------------------------------------------------------------------------------------


def _load_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` completely to 8-bit grayscale, centre-crop it to a square and resize it (antialiased
    bilinear) to ``size`` x ``size``; returns the uint8 ``(size, size)`` array and the original ``(width, height)``.

    16-bit and float images are scaled by their own range.  ``CxrFormatError`` names a missing or unreadable file.
    """
    if not path.is_file():
        raise CxrFormatError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()  # decode every pixel here: a truncated file fails now, naming its path
            original = image.size
            gray = _grayscale(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CxrFormatError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    square = gray.crop(_centre_square(original))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR)), original


def _grayscale(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        return Image.fromarray(((pixels - low) / max(high - low, 1e-12) * 255 + 0.5).astype(np.uint8))
    return image.convert("L")


def _centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop box of the largest centred square of an image of ``size`` (width, height)."""
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _load_mask_bits(path: Path, original: tuple[int, int], size: int) -> np.ndarray:
    """The uint16 ``(size, size)`` finding bits of a mask file: bit k where finding ``LABELS[k]`` is, each mask
    cropped like its image and resized by nearest neighbour (a lesion smaller than the resize step may vanish)."""
    try:
        with np.load(path) as file:
            masks = {name: file[name] for name in file.files}
    except (OSError, ValueError) as err:
        raise CxrFormatError(f"{path}: not a readable mask file ({type(err).__name__}: {err})") from err
    bits = np.zeros((size, size), np.uint16)
    for name, mask in masks.items():
        if name not in LABELS:
            raise CxrFormatError(f"{path}: mask {name!r} is not a label; expected one of {list(LABELS)}")
        if mask.shape != original[::-1]:
            raise CxrFormatError(f"{path}: mask {name!r} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                 f"{original[0]}x{original[1]}")
        square = Image.fromarray(mask.astype(np.uint8)).crop(_centre_square(original))
        resized = np.asarray(square.resize((size, size), Image.Resampling.NEAREST)) > 0
        bits |= resized.astype(np.uint16) << LABELS.index(name)
    return bits


# --- prepare --------------------------------------------------------------------------------------------------


def prepare(data: CxrData, raw_dir: Path, out_h5: Path, stats_json: Path) -> dict[str, Any]:
    """Resize every radiograph of ``raw_dir`` into ``out_h5``; statistics into ``stats_json`` (also returned).

    Groups ``train``/``val``/``test``, one row per image in file order (ChestX-ray14, then the COVID-19 source):
    ``images`` uint8 ``(N, S, S)`` (S = ``data.image_size``; gzip, chunks of ``CHUNK_ROWS`` images); ``labels``
    uint8 ``(N, 15)`` in ``LABELS`` order; ``patient_id``, ``image_index`` (file name) and ``source`` strings;
    synthetic data adds ``masks`` uint16 ``(N, S, S)``, bit k set where finding ``LABELS[k]`` is.  File attributes
    ``labels``, ``image_size``, ``source``.  Statistics: per split ``rows``, ``patients``, ``positives`` per label
    (and ``no_finding``); ``pixel_mean``/``pixel_std`` of the train images in [0, 1].
    """
    size = data.image_size
    rows = _records(data, raw_dir)
    with_masks = rows["mask_path"].notna().all()
    stats: dict[str, Any] = {"source": data.source, "image_size": size, "labels": list(LABELS), "splits": {}}
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5, ThreadPoolExecutor(DECODE_THREADS) as pool:
        h5.attrs["labels"] = list(LABELS)
        h5.attrs["image_size"] = size
        h5.attrs["source"] = data.source
        for split in SPLITS:
            part = rows[rows["split"] == split]
            if split != "val" and part.empty:
                raise CxrFormatError(f"{raw_dir}: no images in the {split} split")
            writer = _SplitWriter(h5.create_group(split), size, with_masks)
            with tqdm(total=len(part), desc=f"prepare {split}", unit="image", disable=None) as bar:
                for start in range(0, len(part), BLOCK_ROWS):
                    block = part.iloc[start : start + BLOCK_ROWS]
                    writer.write(block, list(pool.map(lambda row: _load_row(row, size, with_masks),
                                                      block.itertuples(index=False))))
                    bar.update(len(block))
            stats["splits"][split] = writer.summary()
            if split == "train":
                stats["pixel_mean"], stats["pixel_std"] = writer.pixel_moments()
                h5.attrs["pixel_mean"], h5.attrs["pixel_std"] = stats["pixel_mean"], stats["pixel_std"]
        stats["content_sha256"] = seal(h5, "cxr")  # checkpoints resume only on this content
    write_json(stats_json, stats)
    return stats


def _load_row(row: Any, size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    image, original = _load_image(row.path, size)
    return image, _load_mask_bits(row.mask_path, original, size) if with_masks else None


class _SplitWriter:
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
        return {"rows": self.rows, "patients": len(self.patients),
                "positives": dict(zip(LABELS, self.positives.tolist())), "no_finding": self.no_finding}

    def pixel_moments(self) -> tuple[float, float]:
        """Mean and standard deviation ``sqrt(E[x²] - E[x]²)`` of the split's pixels x in [0, 1]."""
        count = max(self.rows * self.group["images"].shape[1] * self.group["images"].shape[2], 1)
        mean = self.pixel_sum / count
        return round(mean, 6), round(float(np.sqrt(max(self.pixel_squares / count - mean * mean, 0.0))), 6)


# --- training -------------------------------------------------------------------------------------------------


ARCHITECTURES = {"VisionTransformer": lambda config: VisionTransformer(ViTConfig(**config))}
MAIN_METRIC = "mean_auroc"  # higher is better
MAX_SHIFT = 1 / 16  # training augmentation: translation up to ±S/16 pixels, zero filled
MAX_CONTRAST_CHANGE = 0.1  # and exposure: pixels × U(0.9, 1.1) + U(-0.05, 0.05)
GRADCAM_FIGURE_IMAGES = 8  # test images (the first with a lesion mask) whose Grad-CAM maps evaluate keeps


def build_model(config: RunConfig, h5_path: Path) -> VisionTransformer:
    """The run's ViT for the radiographs ``prepare`` wrote, standardised with the train split's pixel moments."""
    m = config.model
    with open_prepared(h5_path, "cxr") as h5:
        size, mean, std = (h5.attrs[name] for name in ("image_size", "pixel_mean", "pixel_std"))
    model = VisionTransformer(ViTConfig(
        image_size=int(size), patch_size=m.patch_size, n_classes=len(LABELS), d_model=m.d_model, n_heads=m.n_heads,
        d_head=config.d_head, n_layers=m.n_layers, d_ff=m.d_ff, dropout=m.dropout, activation=m.activation,
        norm=config.regime.norm, init=config.regime.init,
    ))
    model.set_pixel_stats(float(mean), float(std))
    return model


def _read_split(h5_path: Path, split: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with open_prepared(h5_path, "cxr") as h5:
        if split not in h5:
            raise DataError(f"{h5_path}: no '{split}' group; rerun `flexheads prepare cxr`")
        return {name: h5[split][name][:] for name in names if name in h5[split]}


def augment(rng: np.random.Generator, images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, S, S)`` → float ``(B, 1, S, S)`` in [0, 1], each shifted by up to ``MAX_SHIFT`` of its side and
    its exposure jittered. No mirroring: the heart's side is part of the anatomy."""
    b, size = images.shape[:2]
    reach = int(size * MAX_SHIFT)
    padded = np.pad(images, ((0, 0), (reach, reach), (reach, reach)))
    dy, dx = rng.integers(0, 2 * reach + 1, size=(2, b))
    shifted = np.stack([padded[i, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(dy, dx))])
    gain = rng.uniform(1 - MAX_CONTRAST_CHANGE, 1 + MAX_CONTRAST_CHANGE, (b, 1, 1))
    offset = rng.uniform(-MAX_CONTRAST_CHANGE / 2, MAX_CONTRAST_CHANGE / 2, (b, 1, 1))
    return torch.from_numpy(np.clip(shifted / 255.0 * gain + offset, 0.0, 1.0).astype(np.float32)[:, None])


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """BCE weight of each finding's positives, ``negatives / positives`` (1 where a finding has no positive)."""
    positives = labels.sum(0, dtype=np.float64)
    return np.where(positives > 0, (len(labels) - positives) / np.maximum(positives, 1), 1.0)


def training_batches(
    h5_path: Path, config: RunConfig
) -> tuple[Callable[[int], tuple[torch.Tensor, torch.Tensor]], Callable[[nn.Module, Any], torch.Tensor]]:
    """``batch_at(step)`` (a pure function of seed and step) and the multi-label BCE loss, its positives weighted
    by :func:`positive_weights` when ``train.cxr.class_weighted_loss``."""
    train = _read_split(h5_path, "train", ("images", "labels"))
    n, batch_size = len(train["images"]), config.train.batch_size
    pos_weight = torch.from_numpy(positive_weights(train["labels"]).astype(np.float32)) \
        if config.train.class_weighted_loss else None

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([config.seed, step])
        rows = np.sort(rng.choice(n, size=batch_size, replace=n < batch_size))
        return augment(rng, train["images"][rows]), torch.from_numpy(train["labels"][rows].astype(np.float32))

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        logits, _ = model(images)
        weight = pos_weight.to(labels.device) if pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=weight)

    return batch_at, loss_fn


# --- evaluation -----------------------------------------------------------------------------------------------


def _as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]


@torch.no_grad()
def predict(model: VisionTransformer, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Finding probabilities ``(N, 15)`` of uint8 radiographs ``(N, S, S)``."""
    model.eval().to(device)
    scores = []
    for start in range(0, len(images), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, _ = model(_as_input(images[start : start + batch_size]).to(device))
        scores.append(logits.float().sigmoid().cpu().numpy())
    return np.concatenate(scores).astype(np.float64)


def validation(h5_path: Path, config: RunConfig) -> Callable[[nn.Module, torch.device], float]:
    """The validation curve's metric: ``mean_auroc`` (as :func:`evaluate` computes it: the mean over the findings
    with positives and negatives) of ``VALIDATION_SAMPLES`` validation images evenly spaced over the split, so
    both sources (ChestX-ray14, then COVID-19) appear; without a validation split (``data.cxr.val_fraction: 0``)
    the test split's, for a curve only (nothing is chosen on it).  The images are read once, here.
    """
    with open_prepared(h5_path, "cxr") as h5:
        split = h5["val"] if len(h5["val"]["labels"]) else h5["test"]
        rows = evenly_spaced(len(split["labels"]), VALIDATION_SAMPLES)
        images, labels = split["images"][rows], split["labels"][rows]
    batch_size = config.train.eval_batch_size

    def validate(model: nn.Module, device: torch.device) -> float:
        scores = predict(model, images, batch_size, device)
        return classification.mean_defined(classification.auroc_per_class(labels, scores, LABELS))

    return validate


def lesion_pairs(labels: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (image, finding) with a positive label and a non-empty lesion mask: ``(rows, findings, masks)``."""
    bits = (masks[:, None] >> np.arange(len(LABELS), dtype=np.uint16)[None, :, None, None]) & 1  # (N, 15, S, S)
    present = (labels > 0) & bits.any(axis=(2, 3))
    rows, findings = np.nonzero(present)
    return rows, findings, bits[rows, findings].astype(bool)


def localisation(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                 batch_size: int, device: torch.device) -> tuple[dict[str, float], pd.DataFrame, dict[str, np.ndarray]]:
    """Grad-CAM of every true finding that has a lesion mask, scored against the mask.

    Returns the headline (``pointing_game``, its ``pointing_game_uniform`` reference (a uniform map hits with
    the mask's area fraction), ``cam_iou`` at half of each map's peak, ``lesions``), a per-finding table, and the
    maps of the lesions of the first ``GRADCAM_FIGURE_IMAGES`` masked images for the report's overlays.
    """
    from flexheads.explain import gradcam_maps  # grad-cam (opencv) only where maps are drawn

    rows, findings, lesion_masks = lesion_pairs(labels, masks)
    model.to(device)
    maps = gradcam_maps(model, _as_input(images[rows]).to(device), findings, batch_size)
    hits = localisation_metrics.pointing_game(maps, lesion_masks)
    uniform = localisation_metrics.pointing_game(
        localisation_metrics.baseline_heatmaps("uniform", maps.shape), lesion_masks)
    iou = localisation_metrics.cam_iou(maps, lesion_masks)
    pairs = pd.DataFrame({"finding": np.asarray(LABELS)[findings], "pointing_game": hits,
                          "pointing_game_uniform": uniform, "cam_iou": iou})
    table = pairs.groupby("finding", sort=False).agg(
        pointing_game=("pointing_game", "mean"), pointing_game_uniform=("pointing_game_uniform", "mean"),
        cam_iou=("cam_iou", "mean"), lesions=("cam_iou", "size"),
    )
    shown = np.isin(rows, np.unique(rows)[:GRADCAM_FIGURE_IMAGES])
    figure = {"images": images[rows[shown]], "maps": maps[shown].astype(np.float32), "masks": lesion_masks[shown],
              "findings": np.asarray(LABELS)[findings[shown]].astype(str)}
    headline = {"pointing_game": float(hits.mean()), "pointing_game_uniform": float(uniform.mean()),
                "cam_iou": float(iou.mean()), "lesions": int(len(rows))}
    return headline, table.reset_index(), figure


def evaluate(model: nn.Module, h5_path: Path, stats: dict[str, Any], batch_size: int,
             device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """Classification metrics on the test split at per-finding thresholds that maximise F1 on validation (0.5
    without a validation split); with lesion masks also Grad-CAM localisation (:func:`localisation`).

    Headline: ``mean_auroc``, ``mean_average_precision``, ``mean_f1`` (means over the findings with test
    positives), ``auroc_covid19``, and the localisation scores. Tables: ``per_class`` (AUROC, AP, F1,
    sensitivity, specificity, threshold, positives), ``per_class_localisation`` and, as dicts of arrays for the
    report's figures, ``gradcam`` and ``attention``: the first test radiograph's attention,
    :func:`flexheads.tasks.evaluation.attention_record` with ``tokens`` ``"CLS"`` then ``r{row}c{col}`` per patch
    (row-major), ``grid`` the patch grid ``(rows, cols)`` and ``image`` the uint8 radiograph ``(S, S)``.
    """
    test = _read_split(h5_path, "test", ("images", "labels", "masks"))
    val = _read_split(h5_path, "val", ("images", "labels"))
    scores = predict(model, test["images"], batch_size, device)
    thresholds = classification.thresholds_max_f1(val["labels"], predict(model, val["images"], batch_size, device)) \
        if len(val["labels"]) else np.full(len(LABELS), 0.5)
    result = classification.classification_metrics(test["labels"], scores, thresholds, LABELS)
    headline: dict[str, Any] = {
        "mean_auroc": result["mean_auroc"], "mean_average_precision": result["mean_average_precision"],
        "mean_f1": result["mean_f1"], "auroc_covid19": result["per_class"]["COVID-19"]["auroc"],
        "test_images": int(len(scores)),
    }
    tables: dict[str, Any] = {"per_class": pd.DataFrame.from_dict(result["per_class"], orient="index")
                              .rename_axis("finding").reset_index()}
    tables["attention"] = attention_record(model, _as_input(test["images"][:1]), device,
                                           tokens=["CLS", *grid_tokens(*model.config.grid)], grid=model.config.grid,
                                           image=test["images"][0])
    if "masks" in test:
        located, tables["per_class_localisation"], tables["gradcam"] = localisation(
            model, test["images"], test["labels"], test["masks"], batch_size, device)
        headline |= located
    return headline, tables


REPORT_CAPTION = (
    "cxr (15 findings: ChestX-ray14's 14 and COVID-19; test split, patient-disjoint): mean AUROC and average "
    "precision over findings, F1 at per-finding thresholds chosen on validation; Grad-CAM pointing game and IoU "
    "against the true lesion masks (synthetic data; 'pointing (uniform)': a uniform map's pointing game)."
)
REPORT_COLUMNS = [  # (key in metrics/<run>.json, header, better)
    ("mean_auroc", "mean AUROC", "max"),
    ("mean_average_precision", "mean AP", "max"),
    ("mean_f1", "mean F1", "max"),
    ("auroc_covid19", "AUROC COVID-19", "max"),
    ("pointing_game", "pointing game", "max"),
    ("cam_iou", "CAM IoU", "max"),
    ("pointing_game_uniform", "pointing (uniform)", None),
]
REPORT_BREAKDOWNS = [  # (metrics/<run>/<name>.csv, key column, value column, label, better)
    ("per_class", "finding", "auroc", "AUROC", "max"),
]
