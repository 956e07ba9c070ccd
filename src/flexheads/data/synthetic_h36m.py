"""Synthetic Human3.6M: seeded motion on the H36M skeleton, filmed by the real H36M cameras, written in VideoPose3D's
npz format so the real-data loaders are the code path of the embedded default.

Writes, under ``out_dir`` (emptied first: ``generate``):

* ``data_3d_h36m.npz``: the motion of ``motion.generate_sequence`` embedded in the 32-marker layout, metres,
  world frame.  The 15 markers Human3.6M lifting ignores copy their nearest kept ancestor (the real mocap has
  such coinciding markers too, e.g. the thorax, neck-base and shoulder-anchor markers 13, 16, 24).
* ``data_2d_h36m_gt.npz``: the exact projections of the 17 kept joints with each subject's 4 calibrated cameras
  (``world_to_camera`` then ``project_to_2d``, distortion included), pixels.
* ``data_2d_h36m_synthetic_det.npz`` when ``noise_px > 0`` or ``outlier_rate > 0``: detector-like keypoints,
  the ground truth plus Gaussian noise of ``noise_px`` pixels per coordinate, and a fraction ``outlier_rate`` of
  joints replaced by gross errors: half swapped with their left/right counterpart (if any), the rest moved
  30-80 px in a random direction.

Every sequence draws from its own generator seeded by ``(seed, subject, action, repetition)``, so its arrays are
identical whatever other subjects or actions are requested.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flexheads.data import h36m
from flexheads.data.motion import generate_sequence, sample_subject
from flexheads.io import empty_output_folder

__all__ = ["DETECTIONS", "detect", "embed_markers", "generate", "project"]

DETECTIONS = "synthetic_det"  # keypoints name of the noisy 2D file: data_2d_h36m_synthetic_det.npz
# For each of the 32 marker slots, the kept joint (index into the 17) whose position it takes.
_MARKER_SOURCE = (0, 1, 2, 3, 3, 3, 4, 5, 6, 6, 6, 0, 7, 8, 9, 10, 8, 11, 12, 13, 13, 13, 13, 13, 8, 14, 15, 16,
                  16, 16, 16, 16)  # fmt: skip
_METADATA = {
    "layout_name": "h36m",
    "num_joints": len(h36m.KEPT_JOINTS),
    "keypoints_symmetry": [list(side) for side in h36m.KEYPOINTS_SYMMETRY],
}
_SUBJECT_STREAM, _DETECTION_STREAM = 0, 1  # generator streams: body proportions, detector noise


def _mirror() -> np.ndarray:
    """``(17,)`` index of each joint's left/right counterpart (itself for the centre line)."""
    mirror = np.arange(len(h36m.KEPT_JOINTS))
    left, right = (list(side) for side in h36m.KEYPOINTS_SYMMETRY)
    mirror[left], mirror[right] = right, left
    return mirror


def embed_markers(positions_17: np.ndarray) -> np.ndarray:
    """``(T, 17, 3)`` → ``(T, 32, 3)``: kept joints at ``KEPT_JOINTS``, the other markers per ``_MARKER_SOURCE``."""
    return positions_17[:, _MARKER_SOURCE]


def project(positions_17: np.ndarray, subject: str) -> list[np.ndarray]:
    """World ``(T, 17, 3)`` metres → 4 float32 ``(T, 17, 2)`` pixel arrays, one per camera of ``subject``."""
    views = []
    for camera in h36m.cameras(subject):
        camera_frame = h36m.world_to_camera(positions_17, camera["orientation"], camera["translation"])
        views.append(h36m.project_to_2d(camera_frame, camera).astype(np.float32))
    return views


def detect(keypoints: np.ndarray, rng: np.random.Generator, noise_px: float, outlier_rate: float) -> np.ndarray:
    """Corrupt ground-truth keypoints ``(T, 17, 2)`` like a 2D detector (see the module docstring)."""
    frames, joints, _ = keypoints.shape
    detected = keypoints + rng.normal(0.0, noise_px, size=keypoints.shape)
    outlier = rng.random((frames, joints)) < outlier_rate
    mirror = _mirror()
    swap = outlier & (rng.random((frames, joints)) < 0.5) & (mirror != np.arange(joints))
    jump = outlier & ~swap
    detected[swap] = detected[:, mirror][swap]
    angle = rng.uniform(0, 2 * np.pi, size=(frames, joints))
    radius = rng.uniform(30, 80, size=(frames, joints))
    offset = radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    detected[jump] += offset[jump]
    return detected.astype(np.float32)


def _sequence_names(action: str, count: int) -> list[str]:
    return [action] if count == 1 else [f"{action} {i + 1}" for i in range(count)]


def generate(
    out_dir: Path,
    *,
    subjects: Sequence[str] = ("S1", "S5", "S6", "S7", "S8", "S9", "S11"),
    actions: Sequence[str] = h36m.ACTIONS,
    sequences_per_action: int = 1,
    frames_per_sequence: int = 200,
    seed: int = 0,
    noise_px: float = 0.0,
    outlier_rate: float = 0.0,
) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir``, after deleting everything an earlier run left there (an
    interrupted or other-seed run's files cannot mix with this one's; links are unlinked, not followed).

    Returns:
        ``{'3d': path, 'gt': path}`` plus ``{DETECTIONS: path}`` when detector noise is requested; keys other than
        ``'3d'`` are the ``keypoints`` names of ``h36m.file_2d``.
    """
    if sequences_per_action < 1 or frames_per_sequence < 1:
        raise ValueError(f"need >= 1 sequence and frame, got {sequences_per_action} and {frames_per_sequence}")
    if noise_px < 0 or not 0 <= outlier_rate <= 1:
        raise ValueError(f"need noise_px >= 0 and 0 <= outlier_rate <= 1, got {noise_px} and {outlier_rate}")
    unknown = [action for action in actions if action not in h36m.ACTIONS]
    if unknown:
        raise ValueError(f"unknown actions {unknown}; expected names from {h36m.ACTIONS}")
    with_detections = noise_px > 0 or outlier_rate > 0
    out_dir = empty_output_folder(out_dir)
    positions_3d: dict[str, dict[str, np.ndarray]] = {}
    positions_gt: dict[str, dict[str, list[np.ndarray]]] = {}
    positions_det: dict[str, dict[str, list[np.ndarray]]] = {}
    for subject in subjects:
        subject_id = int(subject.lstrip("S"))
        body = sample_subject(np.random.default_rng([seed, subject_id, _SUBJECT_STREAM]))
        positions_3d[subject], positions_gt[subject], positions_det[subject] = {}, {}, {}
        for action in actions:
            for repetition, name in enumerate(_sequence_names(action, sequences_per_action)):
                key = [seed, subject_id, h36m.ACTIONS.index(action), repetition]
                motion = generate_sequence(body, action, frames_per_sequence, np.random.default_rng(key))
                markers = embed_markers(motion).astype(np.float32)
                # Project the stored float32 positions so the 2D file is exactly the 3D file seen by the cameras.
                views = project(h36m.select_joints(markers), subject)
                positions_3d[subject][name] = markers
                positions_gt[subject][name] = views
                if with_detections:
                    rng = np.random.default_rng([*key, _DETECTION_STREAM])
                    positions_det[subject][name] = [detect(view, rng, noise_px, outlier_rate) for view in views]
    paths = {
        "3d": h36m.write_positions_3d(out_dir / h36m.FILE_3D, positions_3d),
        "gt": h36m.write_positions_2d(out_dir / h36m.file_2d("gt"), positions_gt, _METADATA),
    }
    if with_detections:
        paths[DETECTIONS] = h36m.write_positions_2d(out_dir / h36m.file_2d(DETECTIONS), positions_det, _METADATA)
    return paths
