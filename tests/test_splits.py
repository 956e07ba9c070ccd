"""Every task's validation split: prepared from its training pool, disjoint from its test split, never empty unless
asked to be (and then only without validation curves), the same for the same params."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from flexheads.config import load_params
from flexheads.data import cxr as cxr_data
from flexheads.data import h36m
from flexheads.data.prepared import prepared_hash
from flexheads.errors import DataError, ParamsError
from flexheads.tasks import cxr, pose2d, pose3d
from flexheads.tasks.settings.cxr import CxrData, SyntheticCxr
from flexheads.tasks.settings.pose2d import Pose2DData, SyntheticPose2D
from flexheads.tasks.settings.pose3d import Pose3DData, SyntheticPose3D

REPO = Path(__file__).resolve().parents[1]
POSE3D = Pose3DData(synthetic=SyntheticPose3D(frames_per_sequence=8))  # one sequence per subject and action
POSE2D = Pose2DData(crop_size=(32, 24), val_fraction=0.3,
                    synthetic=SyntheticPose2D(n_train_images=12, n_val_images=4, image_size=(80, 60)))
CXR = CxrData(image_size=16, val_fraction=0.25, synthetic=SyntheticCxr(n_patients=24, n_covid_images=10,
                                                                       image_size=64))


def _prepare(task, data, root: Path) -> Path:
    task.download(data, root / "raw")
    task.prepare(data, root / "raw", root / "prepared.h5", root / "stats.json")
    return root / "prepared.h5"


def _column(h5_path: Path, split: str, name: str) -> np.ndarray:
    with h5py.File(h5_path) as h5:
        values = h5[split][name]
        return values.asstr()[:] if values.dtype.kind in "OS" else values[:]


@pytest.fixture(scope="module")
def pose3d_h5(tmp_path_factory) -> Path:
    return _prepare(pose3d, POSE3D, tmp_path_factory.mktemp("pose3d"))


def _sequences(h5_path: Path, split: str) -> set[tuple[str, str]]:
    """(subject, sequence) of a split's rows; the synthetic data's one sequence per action is named after it."""
    return set(zip(_column(h5_path, split, "subject"), _column(h5_path, split, "action")))


def test_pose3d_validation_is_whole_training_sequences_disjoint_from_test(pose3d_h5):
    train, val, test = (_sequences(pose3d_h5, split) for split in pose3d.SPLITS)
    assert val and test and not val & test and not val & train
    assert {subject for subject, _ in val} <= set(h36m.TRAIN_SUBJECTS)  # drawn from the training pool
    assert {subject for subject, _ in test} == set(h36m.TEST_SUBJECTS)
    assert len(train | val) == len(h36m.TRAIN_SUBJECTS) * len(h36m.ACTIONS)  # every training sequence, once
    chunks = _column(pose3d_h5, "val", "chunk")
    assert len(np.unique(chunks)) == 4 * len(val)  # all cameras of a held-out sequence with it


def test_pose3d_normalisation_comes_from_train_only(pose3d_h5):
    with h5py.File(pose3d_h5) as h5:
        mean = h5["train"].attrs["pose_3d_mean"]
        np.testing.assert_allclose(mean, h5["train"]["pose_3d"][:].astype(np.float64).mean(0), atol=1e-6)


def test_pose3d_prepare_is_deterministic(pose3d_h5, tmp_path):
    pose3d.prepare(POSE3D, pose3d_h5.parent / "raw", tmp_path / "again.h5", tmp_path / "stats.json")
    assert prepared_hash(tmp_path / "again.h5", "pose3d") == prepared_hash(pose3d_h5, "pose3d")


def test_pose3d_empty_validation_split_names_the_key(pose3d_h5, tmp_path):
    data = POSE3D.model_copy(update={"val_fraction": 1e-9})
    with pytest.raises(ParamsError, match=r"data\.pose3d\.val_fraction: 1e-09 of the 75 sequences"):
        pose3d.prepare(data, pose3d_h5.parent / "raw", tmp_path / "out.h5", tmp_path / "stats.json")
    assert not (tmp_path / "out.h5").exists()


def test_pose3d_without_validation_split_has_no_curve(pose3d_h5, tmp_path):
    data = POSE3D.model_copy(update={"val_fraction": 0.0})
    h5_path = tmp_path / "no_val.h5"
    stats = pose3d.prepare(data, pose3d_h5.parent / "raw", h5_path, tmp_path / "stats.json")
    assert stats["splits"]["val"]["rows"] == 0 and _sequences(h5_path, "train") == _sequences(pose3d_h5, "train") | \
        _sequences(pose3d_h5, "val")
    with pytest.raises(DataError, match=r"no validation rows .*data\.pose3d\.val_fraction"):
        pose3d.validation(h5_path, None)


def test_pose2d_validation_is_train2017_images_disjoint_from_test(tmp_path):
    h5_path = _prepare(pose2d, POSE2D, tmp_path)
    train, val, test = (set(_column(h5_path, split, "image_id").tolist()) for split in pose2d.SPLITS)
    annotations = {split: json.loads((tmp_path / "raw" / "annotations" / f"person_keypoints_{split}.json")
                                     .read_text()) for split in pose2d.COCO_SPLITS}
    train2017 = {image["id"] for image in annotations["train2017"]["images"]}
    assert val and test and not val & test and not val & train
    assert val | train <= train2017 and test <= {image["id"] for image in annotations["val2017"]["images"]}
    with h5py.File(h5_path) as h5:
        val_gt = json.loads(h5["val"]["coco_gt_json"][:].tobytes())
        test_gt = json.loads(h5["test"]["coco_gt_json"][:].tobytes())
    assert {image["id"] for image in val_gt["images"]} == {a["image_id"] for a in val_gt["annotations"]} == val
    assert test_gt == annotations["val2017"]


def test_cxr_validation_is_train_val_patients_disjoint_from_test(tmp_path):
    h5_path = _prepare(cxr, CXR, tmp_path)
    patients = {split: set(zip(_column(h5_path, split, "source"), _column(h5_path, split, "patient_id")))
                for split in cxr_data.SPLITS}
    assert patients["val"] and patients["test"] and not patients["val"] & patients["test"]
    assert not patients["val"] & patients["train"]
    train_val = set(cxr_data.read_split_list(tmp_path / "raw" / cxr_data.NIH_DIR / cxr_data.NIH_TRAIN_VAL_LIST))
    val_images = _column(h5_path, "val", "image_index")[_column(h5_path, "val", "source") == "nih"]
    assert set(val_images) <= train_val  # drawn from the training pool


@pytest.mark.parametrize("task", ["pose3d", "pose2d", "cxr"])
def test_val_fraction_zero_needs_eval_every_zero(task, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"][task]["val_fraction"] = 0.0
    raw["train"][task]["eval_every"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=rf"data\.{task}\.val_fraction is 0 .*train\.{task}\.eval_every is 10"):
        load_params(tmp_path / "params.yaml")
    raw["train"][task]["eval_every"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert getattr(load_params(tmp_path / "params.yaml").data, task).val_fraction == 0.0
