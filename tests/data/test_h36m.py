"""Human3.6M format: cameras and projection on hand-made cases, loaders on fixtures in VideoPose3D's exact layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexheads.data import h36m
from flexheads.data.h36m import H36MFormatError
from flexheads.errors import DataError

ALL_SUBJECTS = h36m.TRAIN_SUBJECTS + h36m.TEST_SUBJECTS


def _camera(k=(0.0, 0.0, 0.0), p=(0.0, 0.0)) -> dict:
    return {
        "focal_length": np.array([1000.0, 1100.0]),
        "center": np.array([500.0, 400.0]),
        "radial_distortion": np.array(k),
        "tangential_distortion": np.array(p),
    }


# --- cameras and projection -------------------------------------------------------------------------------


def test_constants_are_consistent() -> None:
    assert len(h36m.KEPT_JOINTS) == len(h36m.PARENTS) == len(h36m.JOINT_NAMES) == 17
    assert all(parent < joint for joint, parent in enumerate(h36m.PARENTS))
    left, right = h36m.KEYPOINTS_SYMMETRY
    assert all(h36m.JOINT_NAMES[i][0] == "L" for i in left) and all(h36m.JOINT_NAMES[i][0] == "R" for i in right)
    assert len(h36m.ACTIONS) == 15 and not set(h36m.TRAIN_SUBJECTS) & set(h36m.TEST_SUBJECTS)


@pytest.mark.parametrize("subject", ALL_SUBJECTS)
def test_cameras_in_pixels_and_metres(subject: str) -> None:
    cams = h36m.cameras(subject)
    assert [cam["id"] for cam in cams] == list(h36m.CAMERA_IDS)
    for cam in cams:
        assert set(cam) == {"id", "center", "focal_length", "radial_distortion", "tangential_distortion",
                            "res_w", "res_h", "orientation", "translation"}  # fmt: skip
        assert 1100 < cam["focal_length"][0] < 1200 and 3.5 < np.linalg.norm(cam["translation"]) < 6.0


def test_unknown_subject_is_rejected() -> None:
    with pytest.raises(ValueError, match="S2"):
        h36m.cameras("S2")


@pytest.mark.parametrize("subject", ALL_SUBJECTS)
def test_world_camera_round_trip_and_view_of_capture_centre(subject: str) -> None:
    points = np.random.default_rng(0).uniform(-2, 2, size=(10, 17, 3))
    for cam in h36m.cameras(subject):
        in_camera = h36m.world_to_camera(points, cam["orientation"], cam["translation"])
        back = h36m.camera_to_world(in_camera, cam["orientation"], cam["translation"])
        np.testing.assert_allclose(back, points, atol=1e-12)
        # The capture centre, 1 m above the floor, is in front of every camera and inside its image.
        centre = h36m.world_to_camera(np.array([0.0, 0.0, 1.0]), cam["orientation"], cam["translation"])
        assert centre[2] > 3.0
        u, v = h36m.project_to_2d(centre, cam)
        assert 0 < u < cam["res_w"] and 0 < v < cam["res_h"]


def test_world_to_camera_is_a_rigid_motion() -> None:
    cam = h36m.cameras("S1")[0]
    a, b = np.array([0.3, -0.2, 1.1]), np.array([-0.5, 0.4, 0.2])
    pa, pb = (h36m.world_to_camera(x, cam["orientation"], cam["translation"]) for x in (a, b))
    assert np.linalg.norm(pa - pb) == pytest.approx(np.linalg.norm(a - b))
    # The camera centre (the translation) maps to the camera origin.
    np.testing.assert_allclose(h36m.world_to_camera(cam["translation"], cam["orientation"], cam["translation"]), 0)


@pytest.mark.parametrize("subject", ["S1", "S11"])
def test_point_on_optical_axis_projects_to_principal_point(subject: str) -> None:
    for cam in h36m.cameras(subject):
        np.testing.assert_allclose(h36m.project_to_2d(np.array([0.0, 0.0, 4.2]), cam), cam["center"], atol=1e-9)


def test_zero_distortion_is_the_pinhole_model() -> None:
    points = np.random.default_rng(1).uniform([-1, -1, 2], [1, 1, 6], size=(50, 3))
    expected = np.array([1000.0, 1100.0]) * points[:, :2] / points[:, 2:] + np.array([500.0, 400.0])
    np.testing.assert_allclose(h36m.project_to_2d(points, _camera()), expected, atol=1e-9)


def test_distortion_hand_computed() -> None:
    # x = 0.2, y = -0.1, r² = 0.05; radial = 1 + 0.1·0.05 + 0.01·0.0025 + 0.001·0.000125 = 1.005025125;
    # tan = 0.002·0.2 + 0.003·(-0.1) = 0.0001; x_d = 0.2·1.005125125 + 0.002·0.05 = 0.201125025,
    # y_d = -0.1·1.005125125 + 0.003·0.05 = -0.1003625125; pixels = f · (x_d, y_d) + c.
    camera = _camera(k=(0.1, 0.01, 0.001), p=(0.002, 0.003))
    pixels = h36m.project_to_2d(np.array([0.4, -0.2, 2.0]), camera)
    np.testing.assert_allclose(pixels, [701.125025, 289.60123625], atol=1e-9)


def test_normalize_and_image_coordinates_round_trip() -> None:
    pixels = np.random.default_rng(2).uniform(0, 1000, size=(7, 17, 2))
    screen = h36m.normalize_screen_coordinates(pixels, w=1000, h=1002)
    np.testing.assert_allclose(h36m.image_coordinates(screen, w=1000, h=1002), pixels, atol=1e-9)
    np.testing.assert_allclose(h36m.normalize_screen_coordinates(np.array([500.0, 501.0]), 1000, 1002), 0.0)
    np.testing.assert_allclose(h36m.normalize_screen_coordinates(np.array([0.0, 0.0]), 1000, 1002), [-1, -1.002])


def test_select_joints() -> None:
    markers = np.arange(5 * 32 * 3, dtype=float).reshape(5, 32, 3)
    kept = h36m.select_joints(markers)
    assert kept.shape == (5, 17, 3)
    np.testing.assert_array_equal(kept[:, 4], markers[:, 6])
    with pytest.raises(ValueError, match="32"):
        h36m.select_joints(kept)


@pytest.mark.parametrize(
    ("name", "label"),
    [("Walking 1", "Walking"), ("Walking", "Walking"), ("TakingPhoto 1", "Photo"), ("Photo", "Photo"),
     ("WalkingDog", "WalkDog"), ("WalkDog 1", "WalkDog"), ("SittingDown 2", "SittingDown"),
     ("WalkTogether 1", "WalkTogether")],
)  # fmt: skip
def test_action_label(name: str, label: str) -> None:
    assert h36m.action_label(name) == label


def test_action_label_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="Dancing"):
        h36m.action_label("Dancing 1")


# --- files: fixtures written with plain np.savez, exactly as VideoPose3D's prepare_data_h36m.py does -----------


def _positions_3d(frames: int = 6) -> dict:
    rng = np.random.default_rng(3)
    return {
        subject: {name: rng.normal(size=(frames, 32, 3)).astype(np.float32) for name in ("Walking 1", "Sitting")}
        for subject in ("S1", "S9")
    }


def _positions_2d(frames: int = 6) -> dict:
    rng = np.random.default_rng(4)
    return {
        subject: {
            name: [rng.uniform(0, 1000, size=(frames, 17, 2)).astype(np.float32) for _ in range(4)]
            for name in ("Walking 1", "Sitting")
        }
        for subject in ("S1", "S9")
    }


METADATA = {
    "layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]
}  # fmt: skip


def _save_3d(path: Path, positions: dict) -> Path:
    np.savez_compressed(path, positions_3d=positions)
    return path


def _save_2d(path: Path, positions: dict, metadata: dict = METADATA) -> Path:
    np.savez_compressed(path, positions_2d=positions, metadata=metadata)
    return path


def test_load_positions_3d(tmp_path: Path) -> None:
    positions = _positions_3d()
    loaded = h36m.load_positions_3d(_save_3d(tmp_path / "data_3d_h36m.npz", positions))
    assert sorted(loaded) == ["S1", "S9"] and sorted(loaded["S1"]) == ["Sitting", "Walking 1"]
    np.testing.assert_array_equal(loaded["S9"]["Sitting"], positions["S9"]["Sitting"])


def test_load_positions_2d(tmp_path: Path) -> None:
    positions = _positions_2d()
    loaded, metadata = h36m.load_positions_2d(_save_2d(tmp_path / "data_2d_h36m_gt.npz", positions))
    assert metadata == METADATA
    assert len(loaded["S1"]["Walking 1"]) == 4
    np.testing.assert_array_equal(loaded["S1"]["Walking 1"][3], positions["S1"]["Walking 1"][3])


def test_metadata_without_layout_name_is_accepted(tmp_path: Path) -> None:
    # VideoPose3D's own ground-truth 2D file stores only num_joints and keypoints_symmetry.
    metadata = {"num_joints": 17, "keypoints_symmetry": METADATA["keypoints_symmetry"]}
    _, loaded = h36m.load_positions_2d(_save_2d(tmp_path / "gt.npz", _positions_2d(), metadata))
    assert loaded == metadata


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(H36MFormatError, match=r"nothere\.npz.*not found"):
        h36m.load_positions_3d(tmp_path / "nothere.npz")


def test_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "wrong.npz"
    np.savez(path, positions=_positions_3d())
    with pytest.raises(H36MFormatError) as err:
        h36m.load_positions_3d(path)
    assert "wrong.npz" in str(err.value) and "positions_3d" in str(err.value) and "'positions'" in str(err.value)


def test_missing_metadata(tmp_path: Path) -> None:
    path = tmp_path / "nometa.npz"
    np.savez(path, positions_2d=_positions_2d())
    with pytest.raises(H36MFormatError, match=r"nometa\.npz.*metadata"):
        h36m.load_positions_2d(path)


def test_wrong_3d_shape(tmp_path: Path) -> None:
    positions = _positions_3d()
    positions["S9"]["Sitting"] = positions["S9"]["Sitting"][:, :17]
    with pytest.raises(H36MFormatError) as err:
        h36m.load_positions_3d(_save_3d(tmp_path / "d3.npz", positions))
    message = str(err.value)
    assert "d3.npz" in message and "S9/Sitting" in message and "(T, 32, 3)" in message and "(6, 17, 3)" in message


def test_wrong_2d_shape(tmp_path: Path) -> None:
    positions = _positions_2d()
    positions["S1"]["Sitting"][2] = np.zeros((6, 17, 3), dtype=np.float32)
    with pytest.raises(H36MFormatError) as err:
        h36m.load_positions_2d(_save_2d(tmp_path / "d2.npz", positions))
    message = str(err.value)
    assert "d2.npz" in message and "S1/Sitting camera 58860488" in message and "(6, 17, 3)" in message


def test_wrong_camera_count(tmp_path: Path) -> None:
    positions = _positions_2d()
    positions["S9"]["Walking 1"] = positions["S9"]["Walking 1"][:3]
    with pytest.raises(H36MFormatError) as err:
        h36m.load_positions_2d(_save_2d(tmp_path / "d2.npz", positions))
    message = str(err.value)
    assert "d2.npz" in message and "S9/Walking 1" in message and "4 camera arrays" in message and "3 entries" in message


def test_non_finite_values(tmp_path: Path) -> None:
    positions = _positions_3d()
    positions["S1"]["Walking 1"][2, 5, 1] = np.nan
    with pytest.raises(H36MFormatError, match=r"d3\.npz: S1/Walking 1: 1 non-finite"):
        h36m.load_positions_3d(_save_3d(tmp_path / "d3.npz", positions))


def test_wrong_num_joints_in_metadata(tmp_path: Path) -> None:
    with pytest.raises(H36MFormatError, match=r"num_joints: expected 17, found 32"):
        h36m.load_positions_2d(_save_2d(tmp_path / "d2.npz", _positions_2d(), {**METADATA, "num_joints": 32}))


def test_check_subjects_names_the_missing(tmp_path: Path) -> None:
    path = tmp_path / "d3.npz"
    h36m.check_subjects(_positions_3d(), ["S1", "S9"], path)
    with pytest.raises(H36MFormatError) as err:
        h36m.check_subjects(_positions_3d(), ["S1", "S5", "S9", "S11"], path)
    assert "d3.npz" in str(err.value) and "['S5', 'S11']" in str(err.value)


def test_align_2d_to_3d_trims_longer_videos_and_drops_extra_sequences(tmp_path: Path) -> None:
    positions_2d = _positions_2d(frames=8)
    positions_2d["S1"]["Directions"] = positions_2d["S1"]["Sitting"]  # no mocap: dropped
    aligned = h36m.align_2d_to_3d(_positions_3d(frames=6), positions_2d, tmp_path / "d2.npz")
    assert sorted(aligned["S1"]) == ["Sitting", "Walking 1"]
    assert all(view.shape == (6, 17, 2) for views in aligned["S9"].values() for view in views)


def test_align_2d_to_3d_names_the_mismatch(tmp_path: Path) -> None:
    positions_3d, path = _positions_3d(frames=6), tmp_path / "d2.npz"
    short = _positions_2d(frames=5)
    with pytest.raises(H36MFormatError, match=r"d2\.npz: S1/Walking 1 camera 54138969: expected at least 6 .* found 5"):
        h36m.align_2d_to_3d(positions_3d, short, path)
    missing = _positions_2d(frames=6)
    del missing["S9"]["Sitting"]
    with pytest.raises(H36MFormatError, match=r"d2\.npz: S9/Sitting of the 3D file is missing"):
        h36m.align_2d_to_3d(positions_3d, missing, path)
    del missing["S9"]
    with pytest.raises(H36MFormatError, match=r"subject 'S9' of the 3D file is missing"):
        h36m.align_2d_to_3d(positions_3d, missing, path)


def test_require_user_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        h36m.require_user_files(tmp_path, "cpn_ft_h36m_dbb")
    message = str(err.value)
    for expected in (str(tmp_path / "data_3d_h36m.npz"), str(tmp_path / "data_2d_h36m_cpn_ft_h36m_dbb.npz"),
                     "prepare_data_h36m.py", "data.pose3d.h36m_dir", "data.pose3d.keypoints"):  # fmt: skip
        assert expected in message
    _save_3d(tmp_path / "data_3d_h36m.npz", _positions_3d())
    _save_2d(tmp_path / "data_2d_h36m_gt.npz", _positions_2d())
    paths = h36m.require_user_files(tmp_path, "gt")
    assert paths == {"3d": tmp_path / "data_3d_h36m.npz", "2d": tmp_path / "data_2d_h36m_gt.npz"}


def test_writers_round_trip_through_the_loaders(tmp_path: Path) -> None:
    positions_3d, positions_2d = _positions_3d(), _positions_2d()
    path_3d = h36m.write_positions_3d(tmp_path / "data_3d_h36m.npz", positions_3d)
    path_2d = h36m.write_positions_2d(tmp_path / "sub" / "data_2d_h36m_gt.npz", positions_2d, METADATA)
    np.testing.assert_array_equal(h36m.load_positions_3d(path_3d)["S1"]["Sitting"], positions_3d["S1"]["Sitting"])
    loaded, metadata = h36m.load_positions_2d(path_2d)
    np.testing.assert_array_equal(loaded["S9"]["Sitting"][1], positions_2d["S9"]["Sitting"][1])
    assert metadata == METADATA
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data_2d_h36m_gt.npz", "data_3d_h36m.npz", "sub"]


def test_writer_keeps_a_name_without_npz_suffix(tmp_path: Path) -> None:
    path = h36m.write_positions_3d(tmp_path / "poses", _positions_3d())
    assert path == tmp_path / "poses" and [p.name for p in tmp_path.iterdir()] == ["poses"]
    assert sorted(h36m.load_positions_3d(path)) == ["S1", "S9"]


def test_writer_rejects_invalid_data_and_leaves_no_file(tmp_path: Path) -> None:
    positions = _positions_3d()
    positions["S1"]["Sitting"] = positions["S1"]["Sitting"][..., :2]
    with pytest.raises(H36MFormatError, match="S1/Sitting"):
        h36m.write_positions_3d(tmp_path / "d3.npz", positions)
    assert list(tmp_path.iterdir()) == []


class _RunsCode:
    """A pickle payload that would create ``marker`` when unpickled with plain pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_names_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "data_3d_h36m.npz"
    np.savez(path, positions_3d=np.array({"S1": _RunsCode(marker)}, dtype=object))
    with pytest.raises(H36MFormatError, match="refused to load pathlib"):
        h36m.load_positions_3d(path)
    assert not marker.exists()


def test_truncated_npz_is_one_format_error(tmp_path: Path) -> None:
    path = tmp_path / "data_3d_h36m.npz"
    np.savez(path, positions_3d=np.array({"S1": {"Walking": np.zeros((3, 17, 3))}}, dtype=object))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(H36MFormatError, match="not a readable npz file"):
        h36m.load_positions_3d(path)
