"""The pose3d stage workers on a tiny synthetic Human3.6M: download → prepare → train → evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from flexheads.cli import app
from flexheads.config import Params, Tracking
from flexheads.data import h36m
from flexheads.stages import evaluate_run, load_model, train_run
from flexheads.tracking import git_commit
from flexheads.tasks import pose3d
from conftest import tiny_heads

REPO = Path(__file__).resolve().parents[1]


def tiny_params(**train_overrides) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"]["regimes"] = ["preln", "tfixup"]
    raw["data"]["pose3d"]["synthetic"].update(frames_per_sequence=40)
    raw["model"]["pose3d"].update(d_model=32, n_layers=2, d_ff=64)
    raw["heads"]["pose3d"] = tiny_heads(4, 16, 2)
    raw["baselines"]["martinez_mlp"]["hidden"] = 128
    raw["train"]["pose3d"].update({"steps": 60, "batch_size": 64, "checkpoint_every": 30, "log_every": 10,
                                   **train_overrides})
    raw["tracking"]["enabled"] = False
    return Params.model_validate(raw)


def run_name(params: Params, attention: str, regime: str) -> str:
    """The pose3d transformer run of the matrix with this attention and regime (its first seed)."""
    return next(r.name for r in params.runs() if r.task == "pose3d" and (r.attention, r.regime) == (attention, regime))


def baseline_name(params: Params) -> str:
    return next(r.name for r in params.baseline_runs() if r.task == "pose3d")


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
        sequences = {}  # split → (subject, action): one sequence per action in the synthetic data
        for split in pose3d.SPLITS:
            g = h5[split]
            sequences[split] = set(zip(g["subject"][:].astype(str), g["action"][:].astype(str)))
            n = len(sequences[split]) * 4 * 40  # sequences × cameras × frames
            assert g["keypoints_2d"].shape == (n, 17, 2) and g["pose_3d"].shape == (n, 17, 3)
            assert stats["splits"][split]["rows"] == n > 0
            np.testing.assert_array_equal(g["pose_3d"][:, 0], 0.0)  # root-relative
            assert np.abs(g["keypoints_2d"][:]).max() < 1.5  # normalised screen coordinates
            assert len(np.unique(g["chunk"][:])) == len(sequences[split]) * 4
    assert {subject for subject, _ in sequences["test"]} == set(h36m.TEST_SUBJECTS)
    assert len(sequences["test"]) == len(h36m.TEST_SUBJECTS) * len(h36m.ACTIONS)
    assert not sequences["train"] & sequences["val"]  # val: whole training sequences held out
    assert sequences["train"] | sequences["val"] == {(s, a) for s in h36m.TRAIN_SUBJECTS for a in h36m.ACTIONS}


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
    run = run_name(params, "standard", "tfixup")  # no warmup: the short run learns from the first step
    summary = train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
    assert not (tmp_path / run / "checkpoint.pt").exists()  # removed once model.pt is written
    metrics = evaluate_run(params, run, h5_path, stats_path, tmp_path / run, tmp_path / "metrics" / f"{run}.json",
                           device="cpu")
    assert metrics["mpjpe"] < 0.75 * metrics["mean_pose_mpjpe"], metrics
    assert metrics["p_mpjpe"] < metrics["mpjpe"]
    per_action = (tmp_path / "metrics" / run / "per_action.csv").read_text().splitlines()
    assert len(per_action) == 1 + len(h36m.ACTIONS)
    assert summary["n_params"] > 0 and summary["steps"] == 200
    history = pd.read_csv(tmp_path / run / "history.csv")
    curve = history.dropna(subset=["val_mpjpe"])
    assert curve["step"].tolist() == [50, 100, 150, 200]  # train.pose3d.eval_every: 50
    assert curve["val_mpjpe"].iloc[-1] < curve["val_mpjpe"].iloc[0]  # the validation curve falls

    with np.load(tmp_path / "metrics" / run / "attention.npz") as attention:
        assert set(attention.files) == {"weights", "tokens", "grid", "image"}
        weights = attention["weights"]
        assert weights.dtype == np.float32 and weights.shape == (2, 4, 17, 17)  # n_layers, n_heads, N, N
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        assert attention["tokens"].tolist() == list(h36m.JOINT_NAMES)
        assert attention["grid"].dtype == np.int64 and attention["grid"].tolist() == [0, 0]
        image = attention["image"]
    with h5py.File(h5_path) as h5:  # the first test frame's 2D input, in its camera's pixels
        first = h5["test"]["keypoints_2d"][0]
        camera = h36m.cameras(h5["test"]["subject"][0].decode())[h5["test"]["camera"][0]]
    assert image.dtype == np.float32 and image.shape == (17, 2)
    np.testing.assert_allclose(h36m.normalize_screen_coordinates(image, camera["res_w"], camera["res_h"]), first,
                               atol=1e-5)
    assert ((image >= 0) & (image <= [camera["res_w"], camera["res_h"]])).all()
    check_examples(tmp_path / "metrics" / run / "examples.npz", h5_path, tmp_path / run)


def check_examples(path: Path, h5_path: Path, model_dir: Path) -> None:
    """examples.npz: 4 test frames evenly spaced over the split, the run's predictions and the truth, root-relative
    in mm, and the 17-joint skeleton."""
    test = pose3d.Split.load(h5_path, "test")
    n = len(test.pose_3d)
    rows = [0, round((n - 1) / 3), round(2 * (n - 1) / 3), n - 1]
    pred = pose3d.predict(load_model(model_dir / "model.pt", pose3d.ARCHITECTURES), test, 4096, torch.device("cpu"))
    with np.load(path) as examples:
        assert set(examples.files) == {"pred", "target", "joint_names", "parents", "actions"}
        assert examples["pred"].dtype == examples["target"].dtype == np.float32
        assert examples["pred"].shape == examples["target"].shape == (4, 17, 3)
        np.testing.assert_allclose(examples["target"], test.pose_3d[rows] * 1000.0, rtol=1e-6)
        np.testing.assert_allclose(examples["pred"], pred[rows] * 1000.0, rtol=1e-6)
        assert examples["joint_names"].tolist() == list(h36m.JOINT_NAMES)
        assert examples["parents"].dtype == np.int64 and examples["parents"].tolist() == list(h36m.PARENTS)
        assert examples["actions"].tolist() == test.action[rows].tolist()


def test_validation_curve_reaches_history_and_mlflow_without_changing_training(prepared, tmp_path, monkeypatch):
    """The MLP baseline (dropout and BatchNorm: the most state a validation call could disturb) trains to the
    same weights with and without validation; the curve lands in history.csv and MLflow at exactly its steps."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    _, h5_path, stats_path = prepared
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    trained = {}
    for eval_every in (0, 7):
        params = tiny_params(eval_every=eval_every).model_copy(update={"tracking": Tracking(uri=uri)})
        run = baseline_name(params)
        trained[eval_every] = train_run(params, run, h5_path, tmp_path / str(eval_every), device="cpu",
                                        progress=False)
    models = {e: load_model(tmp_path / str(e) / "model.pt", pose3d.ARCHITECTURES) for e in trained}
    assert type(models[7]).__name__ == "MartinezMLP"
    reference = models[0].state_dict()
    for key, value in models[7].state_dict().items():  # BatchNorm's running statistics included
        assert torch.equal(value, reference[key]), key

    without, with_val = (pd.read_csv(tmp_path / str(e) / "history.csv") for e in (0, 7))
    assert "val_mpjpe" not in without.columns
    pd.testing.assert_frame_equal(with_val.drop(columns="val_mpjpe"), without)
    expected = [7, 14, 21, 28, 35, 42, 49, 56, 60]  # every 7th step and the last
    assert with_val.dropna(subset=["val_mpjpe"])["step"].tolist() == expected
    raw_rows = (tmp_path / "7" / "history.csv").read_text().splitlines()
    assert raw_rows[0].split(",")[-1] == "val_mpjpe" and raw_rows[1].endswith(",")  # an empty cell at step 1

    logged = MlflowClient(uri).get_metric_history(trained[7]["mlflow_run_id"], "val_mpjpe")
    curve = with_val.dropna(subset=["val_mpjpe"])
    assert sorted((m.step, m.value) for m in logged) == list(zip(expected, curve["val_mpjpe"]))

    out = tmp_path / "metrics" / f"{run}.json"
    evaluate_run(params, run, h5_path, stats_path, tmp_path / "7", out, device="cpu")
    assert not (out.with_suffix("") / "attention.npz").exists()  # the MLP has no attention
    check_examples(out.with_suffix("") / "examples.npz", h5_path, tmp_path / "7")


def test_mlflow_run_records_the_heads_built_the_model_file_and_its_source(prepared, tmp_path, monkeypatch):
    """heads.d_head is the real width built (d_model // n_heads for standard heads, which state no d_head), the
    MLP logs no heads; model.pt is an artifact, the run
    has MLflow's source tags and its experiment a description."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    _, h5_path, _ = prepared
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    params = tiny_params(steps=2, eval_every=0).model_copy(update={"tracking": Tracking(uri=uri)})
    client = MlflowClient(uri)
    widths = {run_name(params, "standard", "preln"): 8, run_name(params, "flexible", "preln"): 16,
              baseline_name(params): None}
    for run, d_head in widths.items():
        summary = train_run(params, run, h5_path, tmp_path / run, device="cpu", progress=False)
        run_id = summary["mlflow_run_id"]
        logged = client.get_run(run_id).data
        assert summary["cpu_time_s"] > 0 and summary["steps_per_s"] > 0
        assert logged.metrics["train_cpu_time_s"] == pytest.approx(summary["cpu_time_s"], abs=1e-3)
        assert logged.metrics["train_steps_per_s"] == pytest.approx(summary["steps_per_s"], abs=1e-4)
        heads = {key: value for key, value in logged.params.items() if key.startswith("heads.")}
        if d_head is None:
            assert heads == {}
        else:
            inner = 4 * d_head  # n_heads 4, d_model 32, 2 layers of q, k, v (32 → inner) and out (inner → 32)
            assert heads == {"heads.n_heads": "4", "heads.d_head": str(d_head), "heads.inner_width": str(inner),
                             "heads.attention_params": str(2 * (3 * (32 * inner + inner) + inner * 32 + 32))}
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.pt"]
        assert logged.tags["mlflow.source.name"] == "flexheads train"
        assert logged.tags["mlflow.source.type"] == "LOCAL"
        assert logged.tags["mlflow.user"]
        assert logged.tags.get("mlflow.source.git.commit", "unknown") == git_commit().removesuffix("-dirty")
    experiment = client.get_experiment_by_name("pose3d")
    assert experiment.tags["mlflow.note.content"].startswith("3D human pose lifting")


def test_validation_on_the_whole_val_split_is_evaluates_mpjpe_there(prepared, tmp_path, monkeypatch):
    """The validation metric is evaluate's MAIN_METRIC, computed by the same code on the val split: on every val
    frame it equals what evaluate reports for a file whose test group is that val split."""
    params, h5_path, stats_path = prepared
    run = params.run(run_name(params, "flexible", "preln"))
    config = params.run_config(run)
    model = pose3d.build_model(config, h5_path)
    val_as_test = shutil.copy(h5_path, tmp_path / "val_as_test.h5")
    with h5py.File(val_as_test, "a") as h5:
        del h5["test"]
        h5.move("val", "test")
    headline, _ = pose3d.evaluate(model, val_as_test, json.loads(stats_path.read_text()),
                                  config.train.eval_batch_size, torch.device("cpu"))
    assert pose3d.validation(h5_path, config)(model, torch.device("cpu")) != headline[pose3d.MAIN_METRIC]  # subset
    monkeypatch.setattr(pose3d, "VALIDATION_SAMPLES", headline["test_frames"])
    assert pose3d.validation(h5_path, config)(model, torch.device("cpu")) == headline[pose3d.MAIN_METRIC]


def test_cpu_training_is_bit_identical(prepared, tmp_path):
    params, h5_path, stats_path = prepared
    run = run_name(params, "flexible", "tfixup")
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
    raw["heads"]["pose3d"]["standard"]["n_heads"] = 7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["runs", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert "heads.pose3d.standard" in result.output and "n_heads (7)" in result.output


def test_every_subcommand_has_help():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in ("runs", "download", "prepare", "train", "evaluate", "report", "compare", "tracking-init", "ui"):
        assert command in top.output
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_sample_metric_of_every_test_frame_is_the_evaluated_mpjpe(prepared):
    """samples: one row per test frame, grouped by chunk; its sample_metric is evaluate's MAIN_METRIC, and a
    resample that repeats one action's frames leaves the mean over actions unweighted."""
    params, h5_path, stats_path = prepared
    config = params.run_config(params.run(run_name(params, "standard", "preln")))
    torch.manual_seed(0)
    headline, tables = pose3d.evaluate(pose3d.build_model(config, h5_path), h5_path,
                                       json.loads(stats_path.read_text()), 512, torch.device("cpu"))
    samples = tables["samples"]
    test = pose3d.Split.load(h5_path, "test")
    assert samples["group"].dtype == samples["action"].dtype == np.int64
    np.testing.assert_array_equal(samples["group"], test.chunk)
    assert len(samples["mpjpe"]) == headline["test_frames"]
    assert pose3d.sample_metric(samples) == pytest.approx(headline[pose3d.MAIN_METRIC], abs=5e-5)
    doubled = np.concatenate([np.arange(len(test.chunk)), np.flatnonzero(samples["action"] == 0)])
    assert pose3d.sample_metric({k: v[doubled] for k, v in samples.items()}) == pytest.approx(
        headline[pose3d.MAIN_METRIC])
