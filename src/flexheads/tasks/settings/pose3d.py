"""The pose3d task's params.yaml sections: ``model.pose3d``, ``train.pose3d``, ``data.pose3d`` (defaults here,
stated again in params.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from flexheads.config import (EncoderSettings, NonNegativeFloat, NonNegativeInt, PositiveInt, Probability, Section,
                              TrainSettings)
from flexheads.data.splits import check_val_fraction
from flexheads.tasks.base import TaskSettings


class Pose3DModel(EncoderSettings):
    window: PositiveInt = 1  # frames of 2D input per sample (odd, centred; 1 = single-frame lifting)

    @field_validator("window")
    @classmethod
    def _odd_window(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"window must be odd so the target frame is centred (got {window})")
        return window


class Pose3DTrain(TrainSettings):
    steps: PositiveInt = 200
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 4096
    eval_every: NonNegativeInt = 50
    stride: PositiveInt = 1  # train on every stride-th frame (Human3.6M runs at 50 fps)


class SyntheticPose3D(Section):
    """Size and noise of the synthetic Human3.6M written by the pose3d ``download`` stage."""

    sequences_per_action: PositiveInt = 1
    frames_per_sequence: PositiveInt = 100
    noise_px: NonNegativeFloat = 0.0
    outlier_rate: Probability = 0.0
    seed: NonNegativeInt = 0


class Pose3DData(Section):
    """Where pose3d data comes from and how it is sampled."""

    source: Literal["synthetic", "h36m"] = "synthetic"
    h36m_dir: str = "data/external/h36m"  # user-supplied VideoPose3D npz files (source: h36m)
    keypoints: str = "gt"  # 2D file data_2d_h36m_<keypoints>.npz: gt, cpn_ft_h36m_dbb, synthetic_det
    val_fraction: Probability = 0.1  # training subjects' sequences (all cameras) held out for validation curves
    synthetic: SyntheticPose3D = SyntheticPose3D()


def check(model: Pose3DModel, train: Pose3DTrain, data: Pose3DData) -> None:
    """Validation curves need a validation split (:func:`flexheads.data.splits.check_val_fraction`)."""
    check_val_fraction("pose3d", data.val_fraction, train.eval_every)


SETTINGS = TaskSettings(model=Pose3DModel, train=Pose3DTrain, data=Pose3DData, check=check)
