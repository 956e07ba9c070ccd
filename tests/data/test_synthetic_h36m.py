"""The synthetic Human3.6M goes through the real loaders and is consistent, in-view, noisy as asked, and seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexheads.data import h36m, synthetic_h36m

SMALL = {"subjects": ("S1", "S9"), "actions": ("Walking", "Sitting", "Eating"), "frames_per_sequence": 40}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic_h36m.generate(
        tmp_path_factory.mktemp("synthetic"), **SMALL, sequences_per_action=2, seed=3, noise_px=4.0, outlier_rate=0.1
    )


def _all_views(positions_2d: dict) -> np.ndarray:
    return np.stack([np.stack(views) for sequences in positions_2d.values() for views in sequences.values()])


def test_files_load_through_the_real_loaders(dataset: dict[str, Path]) -> None:
    assert {key: path.name for key, path in dataset.items()} == {
        "3d": "data_3d_h36m.npz", "gt": "data_2d_h36m_gt.npz", "synthetic_det": "data_2d_h36m_synthetic_det.npz",
    }  # fmt: skip
    positions_3d = h36m.load_positions_3d(dataset["3d"])
    positions_2d, metadata = h36m.load_positions_2d(dataset["gt"])
    h36m.check_subjects(positions_3d, SMALL["subjects"], dataset["3d"])
    assert sorted(positions_3d["S9"]) == ["Eating 1", "Eating 2", "Sitting 1", "Sitting 2", "Walking 1", "Walking 2"]
    assert positions_3d["S1"]["Walking 2"].shape == (40, 32, 3) and positions_3d["S1"]["Walking 2"].dtype == np.float32
    assert metadata["num_joints"] == 17 and metadata["layout_name"] == "h36m"
    aligned = h36m.align_2d_to_3d(positions_3d, positions_2d, dataset["gt"])
    assert all(view.shape == (40, 17, 2) for views in aligned["S1"].values() for view in views)


def test_unkept_markers_copy_kept_joints(dataset: dict[str, Path]) -> None:
    markers = h36m.load_positions_3d(dataset["3d"])["S1"]["Sitting 1"]
    np.testing.assert_array_equal(markers[:, 16], markers[:, 13])  # neck base = thorax
    np.testing.assert_array_equal(markers[:, 4], markers[:, 3])  # right toe = right ankle
    assert np.linalg.norm(markers[:, 0] - markers[:, 12], axis=-1).min() > 0.1  # pelvis and spine differ


def test_ground_truth_2d_is_the_projection_of_3d(dataset: dict[str, Path]) -> None:
    positions_3d = h36m.load_positions_3d(dataset["3d"])
    positions_2d, _ = h36m.load_positions_2d(dataset["gt"])
    for subject, sequences in positions_3d.items():
        for name, markers in sequences.items():
            joints = h36m.select_joints(markers)
            for camera, view in zip(h36m.cameras(subject), positions_2d[subject][name]):
                in_camera = h36m.world_to_camera(joints, camera["orientation"], camera["translation"])
                np.testing.assert_allclose(view, h36m.project_to_2d(in_camera, camera), atol=1e-3)


def test_projections_lie_inside_the_images(dataset: dict[str, Path]) -> None:
    views = _all_views(h36m.load_positions_2d(dataset["gt"])[0])  # (sequences, cameras, T, 17, 2)
    inside = np.all((views >= 0) & (views < 1000), axis=-1)
    assert inside.all(axis=-1).mean() > 0.9  # frames with all 17 joints in view
    assert inside.mean() > 0.98


def test_detections_are_noisy_ground_truth(dataset: dict[str, Path]) -> None:
    gt = _all_views(h36m.load_positions_2d(dataset["gt"])[0])
    detected = _all_views(h36m.load_positions_2d(dataset["synthetic_det"])[0])
    error = np.linalg.norm(detected - gt, axis=-1)
    # Inliers: per-coordinate N(0, 4 px) gives a Rayleigh error with median 4 · sqrt(2 ln 2) ≈ 4.7 px.
    assert np.median(error) == pytest.approx(4.0 * np.sqrt(2 * np.log(2)), rel=0.1)
    # Outliers: 10% of joints, gross (>= 30 px jump or a left/right swap), so about that many errors > 25 px.
    assert 0.05 < np.mean(error > 25) < 0.11


def test_no_detection_file_without_noise(tmp_path: Path) -> None:
    paths = synthetic_h36m.generate(tmp_path, subjects=("S5",), actions=("Posing",), frames_per_sequence=5)
    assert sorted(paths) == ["3d", "gt"] and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data_3d_h36m.npz", "data_2d_h36m_gt.npz"]
    )
    assert list(h36m.load_positions_3d(paths["3d"])["S5"]) == ["Posing"]


def _arrays(paths: dict[str, Path]) -> list[np.ndarray]:
    positions_3d = h36m.load_positions_3d(paths["3d"])
    positions_2d, _ = h36m.load_positions_2d(paths["gt"])
    return [positions_3d[s][n] for s in sorted(positions_3d) for n in sorted(positions_3d[s])] + [
        view for s in sorted(positions_2d) for n in sorted(positions_2d[s]) for view in positions_2d[s][n]
    ]


def test_same_seed_same_arrays_different_seed_different(tmp_path: Path) -> None:
    tiny = {"subjects": ("S1", "S11"), "actions": ("Greeting", "WalkDog"), "frames_per_sequence": 10}
    first = _arrays(synthetic_h36m.generate(tmp_path / "a", **tiny, seed=7))
    again = _arrays(synthetic_h36m.generate(tmp_path / "b", **tiny, seed=7))
    other = _arrays(synthetic_h36m.generate(tmp_path / "c", **tiny, seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert all(not np.allclose(x, y) for x, y in zip(first, other, strict=True))


def test_a_sequence_does_not_depend_on_the_others_requested(tmp_path: Path) -> None:
    both = synthetic_h36m.generate(
        tmp_path / "both", subjects=("S1", "S9"), actions=("Photo", "Purchases"), frames_per_sequence=10
    )
    alone = synthetic_h36m.generate(
        tmp_path / "alone", subjects=("S9",), actions=("Purchases",), frames_per_sequence=10
    )
    np.testing.assert_array_equal(
        h36m.load_positions_3d(both["3d"])["S9"]["Purchases"], h36m.load_positions_3d(alone["3d"])["S9"]["Purchases"]
    )


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Dancing"):
        synthetic_h36m.generate(tmp_path, actions=("Dancing",))
    with pytest.raises(ValueError, match="outlier_rate"):
        synthetic_h36m.generate(tmp_path, outlier_rate=1.5)
    assert list(tmp_path.iterdir()) == []


def _entries(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root``: a file's bytes, ``None`` for a folder (links show up as themselves)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def test_generate_leaves_nothing_of_an_earlier_run(tmp_path: Path) -> None:
    tiny = {"subjects": ("S1",), "actions": ("Walking",), "frames_per_sequence": 5}
    out, outside = tmp_path / "out", tmp_path / "user_files"
    outside.mkdir()
    (outside / "data_2d_h36m_cpn_ft_h36m_dbb.npz").write_bytes(b"the user's")
    synthetic_h36m.generate(out, **tiny, seed=1, noise_px=2.0)  # another seed, with a detections file
    (out / "stray.txt").write_text("stray")
    (out / ".data_3d_h36m.npz.k1ll3d.npz").write_bytes(b"half written")
    (out / "linked").symlink_to(outside)
    synthetic_h36m.generate(out, **tiny, seed=0)
    assert _entries(out) == _entries(synthetic_h36m.generate(tmp_path / "fresh", **tiny, seed=0)["3d"].parent)
    assert _entries(outside) == {"data_2d_h36m_cpn_ft_h36m_dbb.npz": b"the user's"}
