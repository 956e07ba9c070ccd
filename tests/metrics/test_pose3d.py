"""Hand-computed cases for flexheads.metrics.pose3d (all distances in mm)."""

import numpy as np
import pytest

from flexheads.metrics.pose3d import (
    auc3d,
    mean_over_groups,
    mjae,
    mpjpe,
    mpjpe_per_joint,
    mpjve,
    n_mpjpe,
    p_mpjpe,
    pck3d,
    per_joint_error,
)

N_JOINTS = 17
CHAIN_PARENTS = [-1] + list(range(N_JOINTS - 1))  # a simple kinematic chain 0 <- 1 <- ... <- 16


def _pose(seed: int = 0) -> np.ndarray:
    """A non-planar (J, 3) pose with integer mm coordinates, so offsets stay exact in float64."""
    return np.random.default_rng(seed).integers(-800, 800, size=(N_JOINTS, 3)).astype(np.float64)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula: proper 3x3 rotation by ``angle`` radians about ``axis``."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _offset_joints(errors: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """gt at the origin, pred displaced along x so joint j has error ``errors[j]``: shapes (J, 3)."""
    gt = np.zeros((len(errors), 3))
    pred = gt.copy()
    pred[:, 0] = errors
    return pred, gt


SCALAR_METRICS = [mpjpe, p_mpjpe, n_mpjpe, mpjve, pck3d, auc3d, lambda p, g: mjae(p, g, CHAIN_PARENTS)]


def test_identical_poses_have_zero_error():
    seq = np.stack([_pose(s) for s in range(4)])  # (T=4, J, 3)
    assert mpjpe(seq, seq) == 0.0
    assert p_mpjpe(seq, seq) == pytest.approx(0.0, abs=1e-9)
    assert n_mpjpe(seq, seq) == pytest.approx(0.0, abs=1e-9)
    assert mpjve(seq, seq) == 0.0
    assert mjae(seq, seq, CHAIN_PARENTS) == pytest.approx(0.0, abs=1e-5)  # clip keeps cos=1+eps from NaN
    assert pck3d(seq, seq) == 1.0
    # strict "<": an error of 0 is not below threshold 0, so the first of 31 thresholds scores 0
    assert auc3d(seq, seq) == pytest.approx(30 / 31)


@pytest.mark.parametrize("metric", SCALAR_METRICS)
def test_scalar_metrics_return_python_float(metric):
    seq = np.stack([_pose(0), _pose(1)])
    assert type(metric(seq, seq + 1.0)) is float


def test_constant_offset_3_4_0_gives_mpjpe_5():
    gt = np.stack([_pose(0), _pose(1)])
    assert mpjpe(gt + np.array([3.0, 4.0, 0.0]), gt) == 5.0


def test_per_joint_error_and_per_joint_mpjpe():
    gt = np.zeros((2, 3, 3))  # (N=2, J=3, 3)
    pred = gt.copy()
    pred[0, :, 0] = [1.0, 2.0, 3.0]
    pred[1, :, 1] = [3.0, 4.0, 5.0]
    np.testing.assert_array_equal(per_joint_error(pred, gt), [[1, 2, 3], [3, 4, 5]])
    np.testing.assert_array_equal(mpjpe_per_joint(pred, gt), [2.0, 3.0, 4.0])
    assert mpjpe(pred, gt) == 3.0


def test_similarity_transformed_copy_is_aligned_by_p_mpjpe():
    gt = np.stack([[_pose(0), _pose(1)], [_pose(2), _pose(3)]])  # (2, 2, J, 3): leading axes vectorised
    rotations = [_rotation(np.array([1.0, 2.0, 3.0]), 0.7), _rotation(np.array([0.0, 0.0, 1.0]), np.pi / 2)]
    pred = np.empty_like(gt)
    for idx in np.ndindex(gt.shape[:2]):
        pred[idx] = 1.3 * gt[idx] @ rotations[idx[1]].T + np.array([100.0, -50.0, 2000.0])
    assert mpjpe(pred, gt) > 500.0
    assert p_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-8)


def test_reflected_copy_is_not_aligned_by_p_mpjpe():
    gt = _pose(0)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])  # det = -1: no rotation maps it back
    # an unconstrained orthogonal Procrustes (no det fix) would reach 0 here
    assert p_mpjpe(mirrored, gt) > 50.0
    assert p_mpjpe(mirrored, gt) < mpjpe(mirrored, gt)


def test_collapsed_prediction_aligns_to_gt_centroid():
    gt = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]) * 10.0  # centroid 0, radius 10
    collapsed = np.full_like(gt, 7.0)
    assert p_mpjpe(collapsed, gt) == pytest.approx(10.0)  # scale 0 -> every joint at the centroid
    assert n_mpjpe(np.zeros_like(gt), gt) == pytest.approx(10.0)


def test_scaled_copy_is_aligned_by_n_mpjpe():
    gt = np.stack([_pose(0), _pose(1)])
    pred = gt * np.array([0.7, 1.4])[:, None, None]  # a different scale per pose
    assert mpjpe(pred, gt) > 50.0
    assert n_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)


def test_n_mpjpe_does_not_undo_rotation():
    gt = _pose(0)
    assert n_mpjpe(gt @ _rotation(np.array([0.0, 1.0, 0.0]), 0.5).T, gt) > 10.0


def _constant_velocity(velocity: np.ndarray, n_frames: int = 6) -> np.ndarray:
    """(T, J, 3): the same pose translated by ``velocity`` mm each frame."""
    return _pose(0)[None] + np.arange(n_frames)[:, None, None] * velocity


def test_mpjve_ignores_constant_offset():
    gt = _constant_velocity(np.array([10.0, 0.0, -5.0]))
    pred = gt + np.array([40.0, -30.0, 12.0])
    assert mpjpe(pred, gt) > 0.0
    assert mpjve(pred, gt) == 0.0


def test_mpjve_equals_velocity_mismatch():
    gt = _constant_velocity(np.array([10.0, 0.0, -5.0]))
    pred = _constant_velocity(np.array([13.0, 4.0, -5.0]))  # mismatch (3, 4, 0): |v| = 5 mm/frame
    assert mpjve(pred, gt) == pytest.approx(5.0)


@pytest.mark.parametrize("shape", [(1, N_JOINTS, 3), (N_JOINTS, 3)])
def test_mpjve_needs_two_frames(shape):
    poses = np.zeros(shape)
    with pytest.raises(ValueError, match="T >= 2"):
        mpjve(poses, poses)


def test_pck3d_threshold_is_strict():
    pred, gt = _offset_joints([100.0, 149.9, 150.0, 200.0])
    assert pck3d(pred, gt) == 0.5  # 100 and 149.9 count; exactly 150 does not
    assert pck3d(pred, gt, threshold=150.0 + 1e-9) == 0.75
    assert pck3d(pred, gt, threshold=100.0) == 0.0
    assert pck3d(pred, gt, threshold=250.0) == 1.0


def test_auc3d_hand_count():
    pred, gt = _offset_joints([100.0, 149.9, 150.0, 200.0])
    # thresholds 0, 5, ..., 150: 100 is below 105..150 (10 of them), 149.9 below 150 (1), others never
    assert auc3d(pred, gt) == pytest.approx(11 / (31 * 4))
    # thresholds 0, 100, 200, 300 count 0, 0 (100 < 100 is false), 3, 4 joints
    assert auc3d(pred, gt, max_threshold=300.0, n_thresholds=4) == pytest.approx((0 + 0 + 3 + 4) / 16)


def test_mjae_of_a_bone_rotated_by_90_degrees():
    gt = np.array([[0.0, 0, 0], [100.0, 0, 0]])
    pred = np.array([[5.0, 5, 5], [5.0, 305, 5]])  # translated, longer, but perpendicular
    assert mjae(pred, gt, [-1, 0]) == pytest.approx(90.0)


def test_mjae_averages_over_bones_and_ignores_length():
    gt = np.array([[0.0, 0, 0], [100.0, 0, 0], [200.0, 0, 0]])
    pred = np.array([[0.0, 0, 0], [50.0, 0, 0], [50.0, 0, 80]])  # bone 1 same direction, bone 2 at 90
    assert mjae(pred, gt, [-1, 0, 1]) == pytest.approx(45.0)
    reversed_pred = np.array([[0.0, 0, 0], [-100.0, 0, 0], [-200.0, 0, 0]])
    assert mjae(reversed_pred, gt, [-1, 0, 1]) == pytest.approx(180.0)


@pytest.mark.parametrize("metric", SCALAR_METRICS + [per_joint_error, mpjpe_per_joint])
def test_shape_mismatch_raises(metric):
    with pytest.raises(ValueError, match=r"same shape.*\(2, 17, 3\).*\(2, 16, 3\)"):
        metric(np.zeros((2, 17, 3)), np.zeros((2, 16, 3)))


@pytest.mark.parametrize("metric", SCALAR_METRICS + [per_joint_error, mpjpe_per_joint])
def test_last_axis_must_be_3(metric):
    with pytest.raises(ValueError, match=r"\(\.\.\., J, 3\).*\(2, 17, 2\)"):
        metric(np.zeros((2, 17, 2)), np.zeros((2, 17, 2)))


def test_mjae_parents_length_must_equal_joints():
    poses = np.zeros((2, N_JOINTS, 3))
    with pytest.raises(ValueError, match="length J=17"):
        mjae(poses, poses, CHAIN_PARENTS[:-1])
    with pytest.raises(ValueError, match="parents must be -1"):
        mjae(poses, poses, [-1] + [N_JOINTS] * (N_JOINTS - 1))


def test_mean_over_groups_weighs_each_group_once():
    # group 0: frames 1, 3 (mean 2); group 2: frame 8; group 1 absent: (2 + 8) / 2, not the frame mean 4
    assert mean_over_groups(np.array([1.0, 8.0, 3.0]), np.array([0, 2, 0])) == 5.0
    repeated = mean_over_groups(np.array([1.0, 8.0, 3.0, 3.0]), np.array([0, 2, 0, 0]))  # a repeat counts again
    assert repeated == pytest.approx((7 / 3 + 8) / 2)
    with pytest.raises(ValueError, match="non-negative integers"):
        mean_over_groups(np.array([1.0]), np.array([0.5]))
