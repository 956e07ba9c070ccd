"""The pose3d stage workers on a tiny synthetic Human3.6M: download → prepare → train → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flexheads.cli import app
from flexheads.config import Params
from flexheads.data import h36m
from flexheads.stages import evaluate_run, train_run
from flexheads.tasks import pose3d

REPO = Path(__file__).resolve().parents[1]


def tiny_params(**train_overrides) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"]["regimes"] = ["preln", "tfixup"]
    raw["data"]["pose3d"]["synthetic"].update(frames_per_sequence=40)
    raw["model"]["pose3d"].update(d_model=32, n_heads=4, d_head_flexible=16, n_layers=2, d_ff=64)
    raw["train"]["pose3d"].update({"steps": 60, "batch_size": 64, "checkpoint_every": 30, "log_every": 10,
                                   **train_overrides})
    raw["tracking"]["enabled"] = False
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Params, Path, Path]:
    root = tmp_path_factory.mktemp("pose3d")
    params = tiny_params()
    pose3d.download(params.data.pose3d, root / "raw")
    pose3d.prepare(params.data.pose3d, root / "raw", root / "pose3d.h5", root / "pose3d.stats.json")
    return params, root / "pose3d.h5", root / "pose3d.stats.json"


def test_prepare_writes_normalised_root_relative_splits(prepared):
    params, h5_path, stats_path = prepared
    stats = json.loads(stats_path.read_text())
    with h5py.File(h5_path) as h5:
        for split, subjects in pose3d.SPLITS.items():
            g = h5[split]
            n = len(subjects) * len(h36m.ACTIONS) * 4 * 40  # subjects × actions × cameras × frames
            assert g["keypoints_2d"].shape == (n, 17, 2) and g["pose_3d"].shape == (n, 17, 3)
            assert stats["splits"][split]["rows"] == n
            assert set(g["subject"][:].astype(str)) == set(subjects)
            assert set(g["action"][:].astype(str)) == set(h36m.ACTIONS)
            np.testing.assert_array_equal(g["pose_3d"][:, 0], 0.0)  # root-relative
            assert np.abs(g["keypoints_2d"][:]).max() < 1.5  # normalised screen coordinates
            assert len(np.unique(g["chunk"][:])) == len(subjects) * len(h36m.ACTIONS) * 4


def test_windows_repeat_edge_frames_within_a_chunk():
    chunk = np.array([0, 0, 0, 1, 1])
    keypoints = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 17, 2), np.float32)
    split = pose3d.Split(keypoints, np.zeros((5, 17, 3), np.float32), np.array(["a"] * 5), np.array([0, 1, 2, 0, 1]),
                         chunk)
    frames = split.windows(np.array([0, 2, 3]), window=3)[:, :, 0, 0]
    np.testing.assert_array_equal(frames, [[0, 0, 1], [1, 2, 2], [3, 3, 4]])


def test_lifter_learns_far_below_the_mean_pose(prepared, tmp_path):
    params, h5_path, stats_path = prepared
    params = tiny_params(steps=200, batch_size=128)
    run = "pose3d-standard-tfixup"  # no warmup: the short run learns from the first step
    summary = train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
    assert not (tmp_path / run / "checkpoint.pt").exists()  # removed once model.pt is written
    metrics = evaluate_run(params, run, h5_path, stats_path, tmp_path / run, tmp_path / "metrics" / f"{run}.json",
                           device="cpu")
    assert metrics["mpjpe"] < 0.75 * metrics["mean_pose_mpjpe"], metrics
    assert metrics["p_mpjpe"] < metrics["mpjpe"]
    per_action = (tmp_path / "metrics" / run / "per_action.csv").read_text().splitlines()
    assert len(per_action) == 1 + len(h36m.ACTIONS)
    assert summary["n_params"] > 0 and summary["steps"] == 200


def test_cpu_training_is_bit_identical(prepared, tmp_path):
    params, h5_path, stats_path = prepared
    run = "pose3d-flexible-tfixup"
    results = []
    for attempt in ("a", "b"):
        train_run(params, run, h5_path, tmp_path / attempt, device="cpu", progress=False)
        results.append(evaluate_run(params, run, h5_path, stats_path, tmp_path / attempt, tmp_path / f"{attempt}.json",
                                    device="cpu"))
    assert results[0] == results[1]
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_missing_2d_file_names_the_file(prepared, tmp_path):
    params, _, _ = prepared
    raw = tmp_path / "raw"
    pose3d.download(params.data.pose3d, raw)
    (raw / "data_2d_h36m_gt.npz").unlink()
    with pytest.raises(h36m.H36MFormatError, match="data_2d_h36m_gt.npz"):
        pose3d.prepare(params.data.pose3d, raw, tmp_path / "out.h5", tmp_path / "stats.json")
    assert not (tmp_path / "out.h5").exists()  # nothing half-written


def test_cli_reports_missing_licensed_h36m_without_traceback(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["pose3d"].update(source="h36m", h36m_dir=str(tmp_path / "h36m"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["download", "pose3d", "--params", str(tmp_path / "params.yaml"),
                                      "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2
    assert "data_3d_h36m.npz" in result.output and "h36m_dir" in result.output
    assert "Traceback" not in result.output


def test_cli_reports_bad_params_without_traceback(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["pose3d"]["n_heads"] = 7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["runs", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert "model.pose3d" in result.output and "n_heads (7)" in result.output


def test_every_subcommand_has_help():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in ("runs", "download", "prepare", "train", "evaluate", "report", "tracking-init", "ui"):
        assert command in top.output
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
