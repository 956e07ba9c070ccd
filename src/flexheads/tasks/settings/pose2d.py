"""The pose2d task's params.yaml sections: ``model.pose2d``, ``train.pose2d``, ``data.pose2d`` (defaults here,
stated again in params.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from flexheads.config import (EncoderSettings, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Section,
                              TrainSettings)
from flexheads.data.splits import check_val_fraction
from flexheads.tasks.base import TaskSettings


class Pose2DModel(EncoderSettings):
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    pretrained: bool = False  # ImageNet weights (downloaded by torchvision; needs a network)
    backbone_stride: Literal[4, 8, 16] = 8  # 4: the trunk stops after layer1, 8: after layer2, 16: after layer3
    trunk_width: PositiveInt = 16  # base channels of the trunk (conv1, layer1; ×2 per later stage); 64: torchvision's
    d_model: PositiveInt = 32
    d_ff: PositiveInt = 64
    n_layers: PositiveInt = 2

    @model_validator(mode="after")
    def _pretrained_width(self) -> Pose2DModel:
        if self.pretrained and self.trunk_width != 64:
            raise ValueError(f"pretrained: true loads torchvision's ImageNet weights, which exist for trunk_width: 64 "
                             f"only (got trunk_width: {self.trunk_width}); set trunk_width: 64 or pretrained: false")
        return self


class Pose2DTrain(TrainSettings):
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 32
    checkpoint_every: PositiveInt = 500
    eval_every: NonNegativeInt = 200
    lr_scale: PositiveFloat = 2.0  # the small trunk trained from scratch learns fastest at twice the regimes' rate
    flip_test: bool = True  # average the prediction of the crop and of its mirror image at evaluation
    fused_optimizer: bool = True
    channels_last: bool = True


class SyntheticPose2D(Section):
    """Size of the rendered synthetic COCO written by the pose2d ``download`` stage."""

    n_train_images: PositiveInt = 800
    n_val_images: PositiveInt = 200
    image_size: tuple[PositiveInt, PositiveInt] = (320, 240)  # width, height
    max_people: PositiveInt = 1
    seed: NonNegativeInt = 0


class Pose2DData(Section):
    """Where pose2d data comes from: rendered people (default) or COCO 2017 person keypoints."""

    source: Literal["synthetic", "coco"] = "synthetic"
    coco_dir: str = "data/external/coco"  # download cache of the official archives (source: coco)
    crop_size: tuple[PositiveInt, PositiveInt] = (64, 48)  # person crop height, width (COCO's 4:3 aspect)
    val_fraction: Probability = 0.1  # train2017 images held out for validation curves (val2017 is the test set)
    synthetic: SyntheticPose2D = SyntheticPose2D()


def check(model: Pose2DModel, train: Pose2DTrain, data: Pose2DData) -> None:
    """Validation curves need a validation split (:func:`flexheads.data.splits.check_val_fraction`)."""
    check_val_fraction("pose2d", data.val_fraction, train.eval_every)


SETTINGS = TaskSettings(model=Pose2DModel, train=Pose2DTrain, data=Pose2DData, check=check)
