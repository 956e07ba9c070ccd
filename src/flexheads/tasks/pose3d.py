"""The pose3d task: Human3.6M (or its synthetic twin) → lifting 2D joints to root-relative 3D.

Stage workers, each a function of its inputs and outputs:

* ``download``: synthetic default → generate VideoPose3D npz files; ``h36m`` → check the user's licensed
  files and link them in (Human3.6M cannot be downloaded without a licence).
* ``prepare``: npz → ``pose3d.h5`` (``train``/``val``/``test`` groups, one row per frame and camera: normalised 2D,
  root-relative 3D in camera coordinates, subject, action, camera, frame, chunk) + a JSON of statistics.  Test is
  the protocol's S9 and S11; val is the sequences of the training subjects (S1, S5-S8) whose hash falls below
  ``data.pose3d.val_fraction`` (all cameras of a sequence together); train the rest, and only train gives the
  normalisation statistics.
* ``build_model``/``training_batches``/``validation``: the lifter and its step-indexed batches for
  ``flexheads.train.fit``, and the validation split's MPJPE of its validation curves (``val_mpjpe``).
* ``evaluate``: MPJPE / P-MPJPE / N-MPJPE / MPJVE / 3DPCK / AUC / MJAE in mm, per action and per joint, and the
  arrays of the report's figures (attention maps of one test frame, predicted and true skeletons).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from flexheads.config import ParamsError, RunConfig
from flexheads.data import h36m, synthetic_h36m
from flexheads.data.prepared import open_prepared, read_split, require_validation_split, seal
from flexheads.data.splits import held_out, require_held_out
from flexheads.io import atomic_path, write_json
from flexheads.metrics import pose3d as metrics
from flexheads.models.baselines import MartinezConfig, MartinezMLP
from flexheads.models.config import encoder_config
from flexheads.models.lifter import LifterConfig, PoseLifter, mpjpe_loss
from flexheads.tasks.settings.pose3d import SETTINGS, Pose3DData  # noqa: F401  (SETTINGS: a Task member)
from flexheads.tasks.evaluation import VALIDATION_SAMPLES, attention_record, evenly_spaced, predict_batches

SPLITS = ("train", "val", "test")  # h5 groups: val and train share the training subjects, test is S9, S11
VAL_SALT = "pose3d/val"  # salt of the sequences' hash (flexheads.data.splits); changing it moves the val split
NAME = "pose3d"
TITLE = "3D human pose lifting"
MAIN_METRIC = "mpjpe"  # lower is better
MAIN_METRIC_UNIT = "mm"
SAMPLE_GROUP = "sequences (subject × action sequence × camera)"  # samples.npz group: the chunk
LOSS_LABEL = "training loss: MPJPE (m)"  # what mpjpe_loss computes, in its units
EXAMPLE_FRAMES = 4  # test frames of examples.npz, evenly spaced over the split


# --- download -------------------------------------------------------------------------------------------------


def download(data: Pose3DData, out_dir: Path) -> dict[str, Path]:
    """Fill ``out_dir`` with ``data_3d_h36m.npz`` and ``data_2d_h36m_<keypoints>.npz``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if data.source == "synthetic":
        s = data.synthetic
        files = synthetic_h36m.generate(
            out_dir, sequences_per_action=s.sequences_per_action, frames_per_sequence=s.frames_per_sequence,
            seed=s.seed, noise_px=s.noise_px, outlier_rate=s.outlier_rate,
        )
        expected = _raw_files(out_dir, data.keypoints)
        if not expected["2d"].exists():
            raise ParamsError(
                f"data.pose3d.keypoints is '{data.keypoints}' but the synthetic generator wrote "
                f"{sorted(p.name for p in files.values())}; use 'gt', or 'synthetic_det' with "
                f"data.pose3d.synthetic.noise_px > 0"
            )
        return expected
    user_files = h36m.require_user_files(Path(data.h36m_dir), data.keypoints)
    return {kind: _link(src, out_dir / src.name) for kind, src in user_files.items()}


def _link(src: Path, dst: Path) -> Path:
    """Hard-link ``src`` to ``dst`` (a copy across file systems), replacing ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def _raw_files(raw_dir: Path, keypoints: str) -> dict[str, Path]:
    return {"3d": raw_dir / "data_3d_h36m.npz", "2d": raw_dir / f"data_2d_h36m_{keypoints}.npz"}


# --- prepare --------------------------------------------------------------------------------------------------


def prepare(data: Pose3DData, raw_dir: Path, out_h5: Path, stats_json: Path) -> dict[str, Any]:
    """Normalise the npz files into ``out_h5`` one sequence at a time (never two copies of the dataset in memory).

    Per row: ``keypoints_2d (17, 2)`` in normalised screen coordinates (``x / w * 2 - [1, h / w]``),
    ``pose_3d (17, 3)`` root-relative in the camera frame (metres), ``subject``, ``action`` (one of the 15),
    ``camera`` (0–3), ``frame`` and ``chunk`` (one id per subject × sequence × camera, for windows and MPJVE).
    """
    files = _raw_files(raw_dir, data.keypoints)
    positions_3d = h36m.load_positions_3d(files["3d"])
    positions_2d, _ = h36m.load_positions_2d(files["2d"])
    h36m.check_subjects(positions_3d, (*h36m.TRAIN_SUBJECTS, *h36m.TEST_SUBJECTS), files["3d"])
    keypoints_2d = h36m.align_2d_to_3d(positions_3d, positions_2d, files["2d"])

    stats: dict[str, Any] = {"source": data.source, "keypoints": data.keypoints, "val_fraction": data.val_fraction,
                             "splits": {}}  # fmt: skip
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["joint_names"] = list(h36m.JOINT_NAMES)
        h5.attrs["parents"] = list(h36m.PARENTS)
        chunk = 0
        for split, sequences in split_sequences(positions_3d, data.val_fraction).items():
            writer = _RowWriter(h5.create_group(split))
            for subject, sequence in tqdm(sequences, desc=f"prepare {split}", unit="sequence", disable=None):
                world = h36m.select_joints(positions_3d[subject][sequence])  # (T, 17, 3)
                for c, camera in enumerate(h36m.cameras(subject)):
                    in_camera = h36m.world_to_camera(world, camera["orientation"], camera["translation"])
                    writer.append(
                        keypoints_2d=h36m.normalize_screen_coordinates(
                            keypoints_2d[subject][sequence][c], camera["res_w"], camera["res_h"]
                        ),
                        pose_3d=in_camera - in_camera[:, :1],
                        subject=subject, action=h36m.action_label(sequence), camera=c, chunk=chunk,
                    )
                    chunk += 1
            stats["splits"][split] = writer.summary()
        stats["content_sha256"] = seal(h5, "pose3d")  # checkpoints resume only on this content
    write_json(stats_json, stats)
    return stats


def split_sequences(positions_3d: dict[str, dict[str, Any]], val_fraction: float) -> dict[str, list[tuple[str, str]]]:
    """The ``(subject, sequence)`` pairs of each h5 group (``SPLITS``), in subject then sequence-name order.

    ``test``: every sequence of ``h36m.TEST_SUBJECTS``; ``val``: the sequences of ``h36m.TRAIN_SUBJECTS`` whose
    ``"<subject>/<sequence>"`` is :func:`flexheads.data.splits.held_out` with ``val_fraction`` (salt ``VAL_SALT``),
    so a sequence's cameras stay together; ``train``: the other sequences of the training subjects.
    ``ParamsError`` naming ``data.pose3d.val_fraction`` when ``val_fraction`` > 0 holds out nothing.
    """
    pool = [(subject, sequence) for subject in h36m.TRAIN_SUBJECTS for sequence in sorted(positions_3d[subject])]
    held = held_out((f"{subject}/{sequence}" for subject, sequence in pool), val_fraction, VAL_SALT)
    require_held_out(held, len(pool), val_fraction, "data.pose3d.val_fraction", "sequences of the training subjects",
                     "data.pose3d.synthetic.sequences_per_action (synthetic data)")
    is_val = [f"{subject}/{sequence}" in held for subject, sequence in pool]
    return {
        "train": [pair for pair, val in zip(pool, is_val) if not val],
        "val": [pair for pair, val in zip(pool, is_val) if val],
        "test": [(subject, sequence) for subject in h36m.TEST_SUBJECTS for sequence in sorted(positions_3d[subject])],
    }


class _RowWriter:
    """Appends per-sequence blocks to resizable, chunked datasets of one split group, and summarises them."""

    def __init__(self, group: h5py.Group) -> None:
        self.group = group
        self.moments = {name: np.zeros((3, 17, dims)) for name, dims in (("keypoints_2d", 2), ("pose_3d", 3))}
        self.actions: dict[str, int] = {}
        self.rows = 0

    def append(self, keypoints_2d: np.ndarray, pose_3d: np.ndarray, subject: str, action: str, camera: int,
               chunk: int) -> None:
        n = len(pose_3d)
        columns = {
            "keypoints_2d": keypoints_2d.astype(np.float32),
            "pose_3d": pose_3d.astype(np.float32),
            "subject": np.full(n, subject, dtype="S8"),
            "action": np.full(n, action, dtype="S16"),
            "camera": np.full(n, camera, dtype=np.int8),
            "frame": np.arange(n, dtype=np.int32),
            "chunk": np.full(n, chunk, dtype=np.int32),
        }
        for name, values in columns.items():
            if name not in self.group:
                self.group.create_dataset(name, shape=(0, *values.shape[1:]), maxshape=(None, *values.shape[1:]),
                                          dtype=values.dtype, chunks=(4096, *values.shape[1:]))
            dataset = self.group[name]
            dataset.resize(self.rows + n, axis=0)
            dataset[self.rows :] = values
        self.rows += n
        for name, moments in self.moments.items():
            x = columns[name].astype(np.float64)
            moments += (np.full(x.shape[1:], n), x.sum(axis=0), (x * x).sum(axis=0))
        self.actions[action] = self.actions.get(action, 0) + n

    def summary(self) -> dict[str, Any]:
        """Row counts and per-joint mean/std of the 2D inputs and 3D targets (also stored as group attrs)."""
        summary: dict[str, Any] = {"rows": self.rows, "rows_per_action": dict(sorted(self.actions.items()))}
        for name, (count, total, squares) in self.moments.items():
            mean = total / np.maximum(count, 1)
            std = np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0.0))
            summary[f"{name}_mean"] = mean.round(6).tolist()
            summary[f"{name}_std"] = std.round(6).tolist()
            self.group.attrs[f"{name}_mean"] = mean
            self.group.attrs[f"{name}_std"] = std
        return summary


# --- training -------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of pose3d.h5 in memory (float32 arrays; a few hundred MB for real Human3.6M)."""

    keypoints_2d: np.ndarray  # (N, 17, 2)
    pose_3d: np.ndarray  # (N, 17, 3)
    action: np.ndarray  # (N,) str
    frame: np.ndarray  # (N,) int, frame index within the sequence
    chunk: np.ndarray  # (N,) int, one id per subject × sequence × camera

    @classmethod
    def load(cls, h5_path: Path, split: str) -> Split:
        """Group ``split`` of pose3d.h5 read whole (DataError naming the file and what is missing)."""
        g = read_split(h5_path, "pose3d", split, ("keypoints_2d", "pose_3d", "action", "frame", "chunk"))
        return cls(g["keypoints_2d"], g["pose_3d"], g["action"].astype(str), g["frame"], g["chunk"])

    def windows(self, rows: np.ndarray, window: int) -> np.ndarray:
        """2D inputs ``(len(rows), window, 17, 2)`` centred on ``rows``, edge frames repeated within each chunk."""
        half = window // 2
        offsets = np.arange(-half, half + 1)
        starts = np.searchsorted(self.chunk, self.chunk[rows], side="left")
        ends = np.searchsorted(self.chunk, self.chunk[rows], side="right") - 1
        index = np.clip(rows[:, None] + offsets[None, :], starts[:, None], ends[:, None])
        return self.keypoints_2d[index]


ARCHITECTURES = {  # class name saved in model.pt → its constructor from the saved config
    "PoseLifter": lambda config: PoseLifter(LifterConfig.from_dict(config)),
    "MartinezMLP": lambda config: MartinezMLP(MartinezConfig.from_dict(config)),
}


def build_model(config: RunConfig, h5_path: Path) -> PoseLifter | MartinezMLP:
    """The run's lifter (or baseline MLP), standardised with the training split's per-joint statistics."""
    m, b = config.model, config.baseline
    if b is not None:
        model = MartinezMLP(MartinezConfig(n_joints=len(h36m.JOINT_NAMES), window=m.window, hidden=b.hidden,
                                           n_blocks=b.n_blocks, dropout=b.dropout))
    else:
        model = PoseLifter(LifterConfig(n_joints=len(h36m.JOINT_NAMES), window=m.window,
                                        encoder=encoder_config(config)))
    with open_prepared(h5_path, "pose3d") as h5:
        stats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in h5["train"].attrs.items()}
    model.input_norm.set_(stats["keypoints_2d_mean"], stats["keypoints_2d_std"])
    model.output_norm.set_(stats["pose_3d_mean"], stats["pose_3d_std"])
    return model


def training_batches(
    h5_path: Path, config: RunConfig
) -> tuple[Callable[[int], tuple[torch.Tensor, torch.Tensor]], Callable[[nn.Module, Any], torch.Tensor]]:
    """``batch_at(step)`` (a pure function of seed and step) and the MPJPE loss."""
    train = Split.load(h5_path, "train")
    rows = np.flatnonzero(train.frame % config.train.stride == 0)
    batch_size = config.train.batch_size

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        picked = np.sort(np.random.default_rng([config.seed, step]).choice(rows, size=batch_size))
        return torch.from_numpy(train.windows(picked, config.model.window)), torch.from_numpy(train.pose_3d[picked])

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        pred, _ = model(inputs)
        return mpjpe_loss(pred.float(), targets)

    return batch_at, loss_fn


# --- evaluation -----------------------------------------------------------------------------------------------


def lift(model: nn.Module, batches: Iterable[np.ndarray], device: torch.device) -> np.ndarray:
    """Root-relative 3D predictions ``(N, 17, 3)`` in metres of batches of 2D windows ``(B, W, 17, 2)``, in eval
    mode (:func:`flexheads.tasks.evaluation.predict_batches`), concatenated."""
    inputs = (torch.from_numpy(windows) for windows in batches)
    return np.concatenate([pred.float().cpu().numpy() for pred in predict_batches(model, inputs, device)])


def predict(model: nn.Module, split: Split, batch_size: int, device: torch.device) -> np.ndarray:
    """Root-relative 3D predictions ``(N, 17, 3)`` in metres for every row of ``split`` (windows cut per batch)."""
    n, window = len(split.pose_3d), model.config.window
    return lift(model, (split.windows(np.arange(start, min(start + batch_size, n)), window)
                        for start in range(0, n, batch_size)), device)


def per_action_errors(pred: np.ndarray, gt: np.ndarray, action: np.ndarray) -> pd.DataFrame:
    """MPJPE and P-MPJPE (mm) and frame count of each action, in sorted action order; the unweighted mean of its
    ``mpjpe`` column over the actions is the headline ``mpjpe`` (MAIN_METRIC)."""
    rows_of = {name: action == name for name in np.unique(action)}
    return pd.DataFrame({
        "action": list(rows_of),
        "mpjpe": [metrics.mpjpe(pred[rows], gt[rows]) for rows in rows_of.values()],
        "p_mpjpe": [metrics.p_mpjpe(pred[rows], gt[rows]) for rows in rows_of.values()],
        "frames": [int(rows.sum()) for rows in rows_of.values()],
    })


def validation(h5_path: Path, config: RunConfig) -> Callable[[nn.Module, torch.device], float]:
    """The validation curves' metric (``val_mpjpe``): ``mpjpe`` (mm, mean over actions, as :func:`evaluate`
    computes it) of ``VALIDATION_SAMPLES`` frames evenly spaced over the validation split, for the lifter and the
    MLP baseline.

    The validation split is the ``data.pose3d.val_fraction`` of the training subjects' sequences (S1, S5-S8) held
    out by hash, every camera of a sequence with it (:func:`split_sequences`): never trained on, and disjoint from
    the test subjects S9 and S11, so choosing a regime or a step from the curves does not tune on test.  The
    protocol's test numbers therefore come from models trained on ~90% of its training frames.  The 2D windows of
    the subset are cut once, here; the validation split is not kept in memory.
    """
    require_validation_split(h5_path, "pose3d", "pose_3d")
    val = Split.load(h5_path, "val")
    rows = evenly_spaced(len(val.pose_3d), VALIDATION_SAMPLES)
    windows, action = val.windows(rows, config.model.window), val.action[rows]
    gt = val.pose_3d[rows].astype(np.float64) * 1000.0
    batch_size = config.train.eval_batch_size

    def validate(model: nn.Module, device: torch.device) -> float:
        batches = (windows[start : start + batch_size] for start in range(0, len(windows), batch_size))
        pred = lift(model, batches, device) * 1000.0
        return float(per_action_errors(pred, gt, action)["mpjpe"].mean())

    return validate


def per_frame_samples(pred: np.ndarray, gt: np.ndarray, test: Split) -> dict[str, np.ndarray]:
    """``samples.npz`` (one row per test frame): ``mpjpe`` float64, the frame's MPJPE in mm (mean over the 17
    joints); ``action`` int64, its index in the sorted action names; ``group`` int64, its chunk (subject ×
    sequence × camera): a sequence's frames are correlated, so the report's bootstrap resamples whole chunks."""
    _, action = np.unique(test.action, return_inverse=True)
    return {"mpjpe": metrics.per_joint_error(pred, gt).mean(-1), "action": action.astype(np.int64),
            "group": test.chunk.astype(np.int64)}


def sample_metric(samples: Mapping[str, np.ndarray]) -> float:
    """``mpjpe`` (MAIN_METRIC, mm) of rows of :func:`per_frame_samples`: the unweighted mean over the actions present
    of their frames' mean MPJPE (:func:`flexheads.metrics.pose3d.mean_over_groups`)."""
    return metrics.mean_over_groups(samples["mpjpe"], samples["action"])


def _input_pixels(h5_path: Path, split: str, row: int, keypoints_2d: np.ndarray) -> np.ndarray:
    """``keypoints_2d (17, 2)`` of ``row`` of ``split`` (normalised screen units) in its camera's pixels, float32."""
    with open_prepared(h5_path, "pose3d") as h5:
        subject, camera = h5[split]["subject"][row].decode(), int(h5[split]["camera"][row])
    resolution = h36m.cameras(subject)[camera]
    return h36m.image_coordinates(keypoints_2d, resolution["res_w"], resolution["res_h"]).astype(np.float32)


def evaluate(model: nn.Module, h5_path: Path, stats: dict[str, Any], batch_size: int,
             device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Protocol-1/2 metrics on the test split (S9, S11), all in millimetres.

    Returns the headline metrics — ``mpjpe``/``p_mpjpe`` are the unweighted mean over the 15 actions (as
    published tables report), ``*_frame_weighted`` the mean over frames — and the tables: ``per_action`` and
    ``per_joint`` (DataFrames), and two dicts of arrays for the report's figures, the same test frames for
    every run:

    * ``attention`` (transformer runs only; the MLP baseline has none): the first test frame's attention,
      :func:`flexheads.tasks.evaluation.attention_record` with ``tokens`` the 17 joint names, ``grid`` ``(0, 0)``
      and ``image`` its 2D input keypoints float32 ``(17, 2)`` in pixels (the centre frame of a window);
    * ``examples``: ``EXAMPLE_FRAMES`` = K test frames evenly spaced over the split: ``pred`` and ``target``
      float32 ``(K, 17, 3)`` root-relative in mm (as evaluated), ``joint_names`` str ``(17,)``, ``parents`` int64
      ``(17,)`` (-1 for the root), ``actions`` str ``(K,)``;
    * ``samples``: every test frame's MPJPE, action and chunk (:func:`per_frame_samples`), which
      :func:`sample_metric` turns back into ``mpjpe`` for the report's bootstrap.

    ``mean_pose_mpjpe`` is the reference of predicting the mean training pose for every frame.
    """
    test = Split.load(h5_path, "test")
    pred = predict(model, test, batch_size, device) * 1000.0
    gt = test.pose_3d.astype(np.float64) * 1000.0

    per_action = per_action_errors(pred, gt, test.action)
    mean_pose = np.asarray(stats["splits"]["train"]["pose_3d_mean"]) * 1000.0
    chunks = [rows for c in np.unique(test.chunk) if len(rows := np.flatnonzero(test.chunk == c)) > 1]
    velocity_errors = [metrics.mpjve(pred[rows], gt[rows]) for rows in chunks]

    headline = {
        "mpjpe": float(per_action["mpjpe"].mean()),
        "p_mpjpe": float(per_action["p_mpjpe"].mean()),
        "mpjpe_frame_weighted": metrics.mpjpe(pred, gt),
        "p_mpjpe_frame_weighted": metrics.p_mpjpe(pred, gt),
        "n_mpjpe": metrics.n_mpjpe(pred, gt),
        "mpjve": float(np.average(velocity_errors, weights=[len(rows) - 1 for rows in chunks])),
        "pck3d_150": metrics.pck3d(pred, gt, threshold=150.0),
        "auc3d": metrics.auc3d(pred, gt, max_threshold=150.0),
        "mjae_deg": metrics.mjae(pred, gt, h36m.PARENTS),
        "mean_pose_mpjpe": metrics.mpjpe(np.broadcast_to(mean_pose, gt.shape), gt),
        "test_frames": int(len(gt)),
    }
    per_joint = pd.DataFrame({"joint": h36m.JOINT_NAMES, "mpjpe": metrics.mpjpe_per_joint(pred, gt)})
    shown = evenly_spaced(len(gt), EXAMPLE_FRAMES)
    tables: dict[str, Any] = {"per_action": per_action, "per_joint": per_joint, "examples": {
        "pred": pred[shown].astype(np.float32), "target": gt[shown].astype(np.float32),
        "joint_names": np.asarray(h36m.JOINT_NAMES, dtype=str), "parents": np.asarray(h36m.PARENTS, dtype=np.int64),
        "actions": test.action[shown],
    }}
    tables["samples"] = per_frame_samples(pred, gt, test)
    first = np.array([0])
    attention = attention_record(
        model, torch.from_numpy(test.windows(first, model.config.window)), device, tokens=h36m.JOINT_NAMES,
        grid=(0, 0), image=_input_pixels(h5_path, "test", 0, test.keypoints_2d[0]),
    )
    if attention is not None:
        tables["attention"] = attention
    return headline, tables


REPORT_FIGURES = (  # (suffix, kind): figure pose3d_<suffix>, drawn by the report's figure kind <kind>
    ("skeletons", "skeletons_3d"),
    ("per_joint", "per_joint"),
)
REPORT_CAPTION = (
    "pose3d (Human3.6M protocol, test S9 S11): errors in mm. MPJPE and P-MPJPE are the unweighted mean over "
    "the 15 actions; 'frames' columns average over all test frames."
)
REPORT_COLUMNS = [  # (key in metrics/<run>.json, header, better)
    ("mpjpe", "MPJPE", "min"),
    ("mpjpe_frame_weighted", "MPJPE (frames)", "min"),
    ("p_mpjpe", "P-MPJPE", "min"),
    ("mpjve", "MPJVE", "min"),
    ("pck3d_150", "3DPCK@150", "max"),
    ("auc3d", "AUC", "max"),
]
REPORT_BREAKDOWNS = [  # (metrics/<run>/<name>.csv, key column, value column, label, better)
    ("per_action", "action", "mpjpe", "MPJPE (mm)", "min"),
    ("per_joint", "joint", "mpjpe", "MPJPE (mm)", "min"),
]
