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
  ``data.image_size`` → ``cxr.h5`` (splits ``train``/``val``/``test`` by patient: test = NIH's test list, or a
  hashed share of the COVID-19 source's patients; val = the ``data.cxr.val_fraction`` of the remaining patients
  held out by hash; train the rest) + a JSON of statistics.
* ``build_model``/``training_batches``/``validation``: the ViT, its step-indexed, augmented batches (BCE,
  optionally class-weighted), and the validation split's mean AUROC of its validation curves
  (``val_mean_auroc``; never the test split's).
* ``evaluate``: AUROC, AP, F1/sensitivity/specificity at thresholds chosen on the validation split (0.5 when it
  is empty: ``val_fraction: 0``, allowed only with ``train.cxr.eval_every: 0``), per finding; with lesion
  masks (synthetic data) also Grad-CAM localisation (pointing game, IoU) against a uniform map; the attention maps
  of one test radiograph for the report.

The decoding of images and masks is :mod:`flexheads.data.cxr_images`, the records table and the h5 writer of
``prepare`` are :mod:`flexheads.data.cxr_store`, the Grad-CAM localisation is :mod:`flexheads.localisation`.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from flexheads.config import RunConfig
from flexheads.data import synthetic_cxr
from flexheads.data.cxr import (
    COVID_DIR, COVID_IMAGES_DIR, COVID_METADATA, FOLDER_DIR, LABELS, MASKS_DIR, NIH_BBOX_CSV, NIH_CSV, NIH_DIR,
    NIH_IMAGES_DIR, NIH_TEST_LIST, NIH_TRAIN_VAL_LIST, SPLITS, CxrFormatError, download_covid, download_nih,
    read_folder_entries,
)
from flexheads.data.cxr_images import DECODE_THREADS, load_row
from flexheads.data.cxr_store import BLOCK_ROWS, FOLDER_LABELS, SplitWriter, records
from flexheads.data.prepared import open_prepared, read_split, require_validation_split, seal
from flexheads.data.splits import require_held_out
from flexheads.io import atomic_path, replace_with_symlink, write_json
from flexheads.localisation import localisation
from flexheads.metrics import classification
from flexheads.models.config import encoder_config
from flexheads.models.vit import VisionTransformer, ViTConfig
from flexheads.tasks.settings.cxr import SETTINGS, CxrData  # noqa: F401  (SETTINGS: a Task member)
from flexheads.tasks.evaluation import (
    VALIDATION_SAMPLES, attention_record, evenly_spaced, grid_tokens, predict_batches,
)


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


# --- prepare --------------------------------------------------------------------------------------------------


def prepare(data: CxrData, raw_dir: Path, out_h5: Path, stats_json: Path) -> dict[str, Any]:
    """Resize every radiograph of ``raw_dir`` into ``out_h5``; statistics into ``stats_json`` (also returned).

    Groups ``train``/``val``/``test``, one row per image in file order (ChestX-ray14, then the COVID-19 source):
    ``images`` uint8 ``(N, S, S)`` (S = ``data.image_size``; gzip, chunks of ``cxr_store.CHUNK_ROWS`` images);
    ``labels`` uint8 ``(N, 15)`` in ``LABELS`` order; ``patient_id``, ``image_index`` (file name) and ``source``
    strings; synthetic data adds ``masks`` uint16 ``(N, S, S)``, bit k set where finding ``LABELS[k]`` is.  File
    attributes ``labels``, ``image_size``, ``source``.  Statistics: per split ``rows``, ``patients``,
    ``positives`` per label (and ``no_finding``); ``pixel_mean``/``pixel_std`` of the train images in [0, 1].
    ``ParamsError`` naming ``data.cxr.val_fraction`` when it holds out no train_val patient (or all of them); the
    val group is empty only with ``val_fraction: 0`` (then no curves, and F1 thresholds of 0.5).
    """
    size = data.image_size
    rows = records(data, raw_dir)
    patients = rows["source"] + "/" + rows["patient_id"]
    require_held_out(set(patients[rows["split"] == "val"]), patients[rows["split"] != "test"].nunique(),
                     data.val_fraction, "data.cxr.val_fraction", "train_val patients",
                     "data.cxr.synthetic.n_patients (synthetic data)")
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
            writer = SplitWriter(h5.create_group(split), size, with_masks)
            with tqdm(total=len(part), desc=f"prepare {split}", unit="image", disable=None) as bar:
                for start in range(0, len(part), BLOCK_ROWS):
                    block = part.iloc[start : start + BLOCK_ROWS]
                    writer.write(block, list(pool.map(lambda row: load_row(row, size, with_masks),
                                                      block.itertuples(index=False))))
                    bar.update(len(block))
            stats["splits"][split] = writer.summary()
            if split == "train":
                stats["pixel_mean"], stats["pixel_std"] = writer.pixel_moments()
                h5.attrs["pixel_mean"], h5.attrs["pixel_std"] = stats["pixel_mean"], stats["pixel_std"]
        stats["content_sha256"] = seal(h5, "cxr")  # checkpoints resume only on this content
    write_json(stats_json, stats)
    return stats


# --- training -------------------------------------------------------------------------------------------------


ARCHITECTURES = {"VisionTransformer": lambda config: VisionTransformer(ViTConfig.from_dict(config))}
NAME = "cxr"
TITLE = "Chest X-ray classification"
MAIN_METRIC = "mean_auroc"  # higher is better
MAIN_METRIC_UNIT = "0–1"
SAMPLE_GROUP = "patients"  # samples.npz group: one id per patient
LOSS_LABEL = "training loss: binary cross-entropy"  # what training_batches' loss computes
MAX_SHIFT = 1 / 16  # training augmentation: translation up to ±S/16 pixels, zero filled
MAX_CONTRAST_CHANGE = 0.1  # and exposure: pixels × U(0.9, 1.1) + U(-0.05, 0.05)


def build_model(config: RunConfig, h5_path: Path) -> VisionTransformer:
    """The run's ViT for the radiographs ``prepare`` wrote, standardised with the train split's pixel moments."""
    m = config.model
    with open_prepared(h5_path, "cxr") as h5:
        size, mean, std = (h5.attrs[name] for name in ("image_size", "pixel_mean", "pixel_std"))
    model = VisionTransformer(ViTConfig(image_size=int(size), patch_size=m.patch_size, in_channels=1,
                                        n_classes=len(LABELS), encoder=encoder_config(config)))
    model.set_pixel_stats(float(mean), float(std))
    return model


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
    train = read_split(h5_path, "cxr", "train", ("images", "labels"))
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
    """uint8 radiographs ``(B, S, S)`` → the model's input ``(B, 1, S, S)`` float32 in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]


def predict(model: VisionTransformer, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Finding probabilities ``(N, 15)`` of uint8 radiographs ``(N, S, S)``, in eval mode
    (:func:`flexheads.tasks.evaluation.predict_batches`)."""
    batches = (_as_input(images[start : start + batch_size]) for start in range(0, len(images), batch_size))
    scores = [logits.float().sigmoid().cpu().numpy() for logits in predict_batches(model, batches, device)]
    return np.concatenate(scores).astype(np.float64)


def validation(h5_path: Path, config: RunConfig) -> Callable[[nn.Module, torch.device], float]:
    """The validation curves' metric (``val_mean_auroc``): ``mean_auroc`` (as :func:`evaluate` computes it: the
    mean over the findings with positives and negatives) of ``VALIDATION_SAMPLES`` images evenly spaced over the
    validation split, so both sources (ChestX-ray14, then COVID-19) appear.

    The validation split is the ``data.cxr.val_fraction`` of the train_val patients held out by patient hash
    (``flexheads.data.cxr``): never trained on and patient-disjoint from the test split, which it never falls
    back to (an empty split is a ``DataError``).  The images are read once, here.
    """
    require_validation_split(h5_path, "cxr", "labels")
    with open_prepared(h5_path, "cxr") as h5:
        split = h5["val"]
        rows = evenly_spaced(len(split["labels"]), VALIDATION_SAMPLES)
        images, labels = split["images"][rows], split["labels"][rows]
    batch_size = config.train.eval_batch_size

    def validate(model: nn.Module, device: torch.device) -> float:
        return sample_metric({"labels": labels, "scores": predict(model, images, batch_size, device)})

    return validate


def evaluate(model: nn.Module, h5_path: Path, stats: dict[str, Any], batch_size: int,
             device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """Classification metrics on the test split at per-finding thresholds that maximise F1 on validation (0.5
    without a validation split); with lesion masks also Grad-CAM localisation
    (:func:`flexheads.localisation.localisation`).

    Headline: ``mean_auroc``, ``mean_average_precision``, ``mean_f1`` (means over the findings with test
    positives), ``auroc_covid19``, and the localisation scores. Tables: ``per_class`` (AUROC, AP, F1,
    sensitivity, specificity, threshold, positives), ``per_class_localisation`` and, as dicts of arrays for the
    report's bootstrap and figures, ``samples`` (per test image its ``scores`` float64 and ``labels`` uint8
    ``(N, 15)``, and ``group``, :func:`patient_groups`), ``gradcam`` and ``attention``: the first test radiograph's
    attention, :func:`flexheads.tasks.evaluation.attention_record` with ``tokens`` ``"CLS"`` then ``r{row}c{col}``
    per patch (row-major), ``grid`` the patch grid ``(rows, cols)`` and ``image`` the uint8 radiograph ``(S, S)``.
    """
    test = read_split(h5_path, "cxr", "test", ("images", "labels"),
                      optional=("masks", "patient_id", "source"))  # masks: synthetic only
    val = read_split(h5_path, "cxr", "val", ("images", "labels"))
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
    tables["samples"] = {"scores": scores, "labels": test["labels"].astype(np.uint8), "group": patient_groups(test)}
    if "masks" in test:
        located, tables["per_class_localisation"], tables["gradcam"] = localisation(
            model, test["images"], test["labels"], test["masks"], batch_size, device, _as_input)
        headline |= located
    return headline, tables


def patient_groups(split: Mapping[str, np.ndarray]) -> np.ndarray:
    """int64 ``(N,)``: one id per patient (``source/patient_id``: the two sources number patients independently) of
    a split read by ``read_split``, or per image when the file stores no patient ids.  A patient's images are
    correlated, so the report's bootstrap resamples patients."""
    if "patient_id" not in split:
        return np.arange(len(split["labels"]), dtype=np.int64)
    patients = np.char.add(np.char.add(split["source"].astype(str), "/"), split["patient_id"].astype(str))
    return np.unique(patients, return_inverse=True)[1].astype(np.int64)


def sample_metric(samples: Mapping[str, np.ndarray]) -> float:
    """``mean_auroc`` (MAIN_METRIC) of rows of ``evaluate``'s ``samples`` (``scores`` and ``labels`` ``(N, 15)``):
    the mean AUROC over the findings with both classes among the rows (NaN if none has)."""
    return classification.mean_defined(classification.auroc_per_class(samples["labels"], samples["scores"], LABELS))


REPORT_FIGURES = (  # (suffix, kind): figure cxr_<suffix>, drawn by the report's figure kind <kind>
    ("attention_cls", "cls_attention"),
    ("gradcam", "gradcam"),
)
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
