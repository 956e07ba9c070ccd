"""The cxr task's params.yaml sections: ``model.cxr``, ``train.cxr``, ``data.cxr`` (defaults here, stated again
in params.yaml)."""

from __future__ import annotations

from typing import Literal

from flexheads.config import EncoderSettings, NonNegativeInt, PositiveInt, Probability, Section, TrainSettings
from flexheads.data.splits import check_val_fraction
from flexheads.tasks.base import TaskSettings


class CxrModel(EncoderSettings):
    patch_size: PositiveInt = 16  # ViT patch side: (data.cxr.image_size / patch_size)^2 tokens + CLS


class CxrTrain(TrainSettings):
    steps: PositiveInt = 300
    batch_size: PositiveInt = 32
    class_weighted_loss: bool = False  # BCE positives weighted by negatives/positives of each finding


class SyntheticCxr(Section):
    """Size of the procedural radiographs written by the cxr ``download`` stage (ChestX-ray14 and COVID layouts)."""

    n_patients: PositiveInt = 400  # ChestX-ray14-style patients, 1-4 images each
    n_covid_images: PositiveInt = 80  # COVID-19 images in the covid-chestxray-dataset layout
    image_size: PositiveInt = 128  # side of the written PNGs (ChestX-ray14's are 1024)
    seed: NonNegativeInt = 0


class CxrFolder(Section):
    """A user-supplied dataset: images in ``images`` and a CSV shaped like ChestX-ray14's Data_Entry_2017.csv."""

    images: str = "data/external/cxr_folder/images"
    labels_csv: str = "data/external/cxr_folder/labels.csv"
    test_fraction: Probability = 0.2  # patient-level split when no split files are given


class CxrData(Section):
    """Where cxr data comes from: procedural radiographs (default), NIH ChestX-ray14 + COVID-19, or a folder."""

    source: Literal["synthetic", "nih", "folder"] = "synthetic"
    image_size: PositiveInt = 64  # prepare resizes every radiograph to image_size × image_size (uint8)
    nih_dir: str = "data/external/chestxray14"  # download cache of the 12 image archives and the CSV/split files
    covid_dir: str = "data/external/covid-chestxray-dataset"  # the COVID-19 source (metadata.csv + images/)
    include_covid: bool = True  # add the COVID-19 source's frontal X-rays (COVID-19 → label 15, others mapped)
    val_fraction: Probability = 0.1  # train_val patients held out for validation (curves, F1 thresholds)
    folder: CxrFolder = CxrFolder()
    synthetic: SyntheticCxr = SyntheticCxr()


def check(model: CxrModel, train: CxrTrain, data: CxrData) -> None:
    """The ViT's patches must tile the prepared radiographs; validation curves need a validation split
    (:func:`flexheads.data.splits.check_val_fraction`; without one, F1 thresholds fall back to 0.5)."""
    if data.image_size % model.patch_size:
        raise ValueError(f"model.cxr.patch_size ({model.patch_size}) must divide data.cxr.image_size "
                         f"({data.image_size})")
    check_val_fraction("cxr", data.val_fraction, train.eval_every)


SETTINGS = TaskSettings(model=CxrModel, train=CxrTrain, data=CxrData, check=check)
