"""Motion generator invariants: rigid bones, anatomical joint ranges, smoothness, action-specific poses, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from flexheads.data import h36m, motion

FPS = 50
FRAMES = 150  # 3 s: a full gait cycle and most action periods
LOCOMOTION = ("Walking", "WalkDog", "WalkTogether")
PELVIS, R_HIP, R_KNEE, R_FOOT, L_HIP, L_KNEE, L_FOOT, NOSE = 0, 1, 2, 3, 4, 5, 6, 9
L_SHOULDER, L_ELBOW, L_WRIST, R_SHOULDER, R_ELBOW, R_WRIST = 11, 12, 13, 14, 15, 16


def _sequence(action: str, seed: int = 0, frames: int = FRAMES) -> tuple[motion.SubjectModel, np.ndarray]:
    rng = np.random.default_rng(seed)
    subject = motion.sample_subject(rng)
    return subject, motion.generate_sequence(subject, action, frames, rng, fps=FPS)


def _interior_angle(positions: np.ndarray, a: int, joint: int, b: int) -> np.ndarray:
    """Angle (degrees) at ``joint`` between the bones towards ``a`` and ``b``: 180 = straight limb."""
    u, v = positions[:, a] - positions[:, joint], positions[:, b] - positions[:, joint]
    cosine = np.sum(u * v, axis=-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    return np.degrees(np.arccos(np.clip(cosine, -1, 1)))


def _closest_wrist_to_nose(positions: np.ndarray) -> float:
    return float(np.linalg.norm(positions[:, [L_WRIST, R_WRIST]] - positions[:, [NOSE]], axis=-1).min())


def test_every_h36m_action_is_generated() -> None:
    assert set(motion.ACTION_NAMES) == set(h36m.ACTIONS)
    subject = motion.sample_subject(np.random.default_rng(0))
    with pytest.raises(ValueError, match="Dancing"):
        motion.generate_sequence(subject, "Dancing", 5, np.random.default_rng(0))


def test_sampled_subjects_are_scaled_symmetric_and_varied() -> None:
    subjects = [motion.sample_subject(np.random.default_rng(seed)) for seed in range(20)]
    for subject in subjects:
        ratio = subject.bone_lengths[1:] / motion.BONE_MEANS[1:]
        assert np.all(ratio > 0.9 * 0.95) and np.all(ratio < 1.1 * 1.05)
        left, right = h36m.KEYPOINTS_SYMMETRY
        np.testing.assert_array_equal(subject.bone_lengths[list(left)], subject.bone_lengths[list(right)])
    heights = [subject.bone_lengths[[R_KNEE, R_FOOT]].sum() for subject in subjects]
    assert np.ptp(heights) > 0.05


@pytest.mark.parametrize("action", motion.ACTION_NAMES)
def test_bones_are_rigid(action: str) -> None:
    subject, positions = _sequence(action)
    assert positions.shape == (FRAMES, 17, 3) and np.all(np.isfinite(positions))
    for joint, parent in enumerate(h36m.PARENTS):
        if parent >= 0:
            lengths = np.linalg.norm(positions[:, joint] - positions[:, parent], axis=-1)
            np.testing.assert_allclose(lengths, subject.bone_lengths[joint], atol=1e-6)


@pytest.mark.parametrize("action", motion.ACTION_NAMES)
def test_knees_and_elbows_bend_within_limits(action: str) -> None:
    _, positions = _sequence(action)
    # Flexion limits 0..150° mean an interior angle of 30..180°.
    for a, joint, b in ((R_HIP, R_KNEE, R_FOOT), (L_HIP, L_KNEE, L_FOOT),
                        (L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):  # fmt: skip
        assert _interior_angle(positions, a, joint, b).min() >= 30 - 1e-6
    # Knees only bend forward: the knee never lies behind the hip-ankle line (pelvis forward = left-right × up).
    forward = np.cross(positions[:, L_HIP] - positions[:, R_HIP], [0.0, 0.0, 1.0])
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    for hip, knee, foot in ((R_HIP, R_KNEE, R_FOOT), (L_HIP, L_KNEE, L_FOOT)):
        mid = (positions[:, hip] + positions[:, foot]) / 2
        assert np.all(np.sum((positions[:, knee] - mid) * forward, axis=-1) > -0.01)


@pytest.mark.parametrize("action", motion.ACTION_NAMES)
def test_motion_is_smooth_and_grounded(action: str) -> None:
    subject, positions = _sequence(action)
    step = np.linalg.norm(np.diff(positions, axis=0), axis=-1)  # metres per frame at 50 fps
    jerk = np.linalg.norm(np.diff(positions, n=2, axis=0), axis=-1)
    # A swinging foot in gait reaches ~4-5 m/s (8-10 cm/frame); everything else stays below 5 cm/frame.
    assert step.max() < (0.12 if action in LOCOMOTION else 0.05)
    assert jerk.max() < 0.02  # second difference: no jumps (a 2 cm jump alone would give >= 2 cm)
    feet_z = positions[:, [R_FOOT, L_FOOT], 2]
    assert feet_z.min() > subject.ankle_height - 0.03
    np.testing.assert_allclose(feet_z.min(axis=1), subject.ankle_height, atol=0.03)


def test_actions_produce_distinguishable_poses() -> None:
    pelvis_height = {a: _sequence(a)[1][:, PELVIS, 2].mean() for a in ("Sitting", "Walking", "Waiting", "Eating")}
    assert pelvis_height["Sitting"] < pelvis_height["Walking"] - 0.25
    assert pelvis_height["Eating"] < pelvis_height["Waiting"] - 0.25
    # Hand-to-mouth actions bring a wrist close to the nose; walking never does.
    assert _closest_wrist_to_nose(_sequence("Phoning")[1]) < 0.2
    assert _closest_wrist_to_nose(_sequence("Walking")[1]) > 0.4
    # Walking covers ground; waiting stays put.
    travel = {a: np.linalg.norm(np.ptp(_sequence(a)[1][:, PELVIS, :2], axis=0)) for a in ("Walking", "Waiting")}
    assert travel["Walking"] > 1.0 and travel["Waiting"] < 0.3


def test_seeded_determinism() -> None:
    np.testing.assert_array_equal(_sequence("Greeting", seed=5)[1], _sequence("Greeting", seed=5)[1])
    assert not np.allclose(_sequence("Greeting", seed=5)[1], _sequence("Greeting", seed=6)[1], atol=1e-2)
    subject = motion.sample_subject(np.random.default_rng(0))
    first, second = (motion.generate_sequence(subject, "Walking", 50, np.random.default_rng(s)) for s in (1, 2))
    assert np.abs(first - second).max() > 0.1  # same subject, different sequences
