"""The bad-input corpus: every user-caused failure ends with exit code 2 and one line that names the file (and the
key or step), and writes no output; nothing in a data file is executed.

Each case runs the real CLI in a subprocess on a tiny prepared pose3d project.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from faults.harness import assert_ok, flexheads, partial_files, run_statuses
from flexheads.config import load_params
from flexheads.models.vit import ViTConfig, VisionTransformer
from flexheads.nn import EncoderConfig
from flexheads.stages import save_model
from test_orchestration import make_project

pytestmark = pytest.mark.slow

RUN, OTHER_RUN = "pose3d-standard-noam-0", "pose3d-flexible-noam-0"
H5, STATS = "data/prepared/pose3d.h5", "data/prepared/pose3d.stats.json"
PREPARE = ["prepare", "pose3d", "--raw", "data/raw/pose3d", "--out", "out/p.h5", "--stats", "out/p.stats.json"]


def one_pose3d_run(raw: dict) -> None:
    raw["experiment"].update(tasks=["pose3d"], attention=["standard", "flexible"], regimes=["noam"])
    raw["train"]["pose3d"].update(steps=10, checkpoint_every=5, log_every=5)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data prepared and RUN trained: the good inputs every case spoils one of, in a copy."""
    root = make_project(tmp_path_factory.mktemp("bad") / "p", one_pose3d_run)
    assert_ok(flexheads(root, "download", "pose3d", "--out", "data/raw/pose3d"))
    assert_ok(flexheads(root, "prepare", "pose3d", "--raw", "data/raw/pose3d", "--out", H5, "--stats", STATS))
    assert_ok(flexheads(root, "train", RUN, "--data", H5, "--out", f"models/{RUN}", "--no-progress"))
    return root


@pytest.fixture
def workspace(project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "w"
    shutil.copytree(project, copy, symlinks=True, ignore=shutil.ignore_patterns(".git", ".dvc"))
    return copy


def assert_user_error(result: subprocess.CompletedProcess, *named: str, one_line: bool = True) -> str:
    """Exit code 2, no traceback, and one ``error:`` message naming each of ``named``; returns the message."""
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("error: "):].strip()
    assert not one_line or "\n" not in message, message
    for name in named:
        assert name in message, message
    return message


def train(workspace: Path, *extra: str, run: str = RUN, out: str = "models/new") -> subprocess.CompletedProcess:
    return flexheads(workspace, "train", run, "--data", H5, "--out", out, "--no-progress", *extra)


def evaluate(workspace: Path, run: str = RUN, model: str = f"models/{RUN}") -> subprocess.CompletedProcess:
    return flexheads(workspace, "evaluate", run, "--data", H5, "--stats", STATS, "--model", model,
                     "--out", "metrics/new.json")


def assert_nothing_written(workspace: Path) -> None:
    assert not (workspace / "models/new").exists()
    assert not (workspace / "metrics/new.json").exists() and not (workspace / "metrics/new").exists()
    assert not (workspace / "out").exists() or not any((workspace / "out").iterdir())
    assert not partial_files(workspace)


# --- prepared HDF5 files ----------------------------------------------------------------------------------

SPOILED_H5 = {
    "truncated": lambda data: data[: len(data) // 2],
    "zeroed": lambda data: bytes(len(data)),
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("spoil", SPOILED_H5)
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_spoiled_prepared_file(workspace: Path, spoil: str, command: str) -> None:
    path = workspace / H5
    path.write_bytes(SPOILED_H5[spoil](path.read_bytes()))
    result = train(workspace) if command == "train" else evaluate(workspace)
    assert_user_error(result, H5, "rerun `flexheads prepare pose3d`")
    assert_nothing_written(workspace)


def test_an_hdf5_file_not_written_by_prepare(workspace: Path) -> None:
    import h5py

    with h5py.File(workspace / H5, "w") as h5:
        h5.create_group("train")
    assert_user_error(train(workspace), H5, "not sealed by `flexheads prepare`")
    assert_nothing_written(workspace)


# --- raw VideoPose3D npz files ----------------------------------------------------------------------------


def test_a_truncated_npz(workspace: Path) -> None:
    npz = workspace / "data/raw/pose3d/data_3d_h36m.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    assert_user_error(flexheads(workspace, *PREPARE), "data_3d_h36m.npz")
    assert_nothing_written(workspace)


class _Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.sentinel,))


def test_a_crafted_npz_runs_nothing(workspace: Path) -> None:
    sentinel = workspace / "PWNED"
    payload = np.empty(1, dtype=object)
    payload[0] = {"S1": _Payload(sentinel)}
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, payload, allow_pickle=True)
    with zipfile.ZipFile(workspace / "data/raw/pose3d/data_3d_h36m.npz", "w") as npz:
        npz.writestr("positions_3d.npy", buffer.getvalue())
    assert b"PWNED" in pickle.dumps(payload)  # the payload does name the file it would create
    assert_user_error(flexheads(workspace, *PREPARE), "data_3d_h36m.npz")
    assert not sentinel.exists()
    assert_nothing_written(workspace)


# --- model files ------------------------------------------------------------------------------------------


def test_random_bytes_as_model(workspace: Path) -> None:
    (workspace / f"models/{RUN}/model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    message = assert_user_error(evaluate(workspace), f"models/{RUN}/model.pt", "not a model file")
    assert "weights_only" not in message  # torch's advice to load it unsafely is not passed on
    assert_nothing_written(workspace)


def test_a_model_of_another_task(workspace: Path) -> None:
    params = load_params(workspace / "params.yaml")
    encoder = EncoderConfig(d_model=16, n_heads=2, d_head=None, n_layers=1, d_ff=32, dropout=0.0, activation="gelu",
                            norm="post", init="xavier")
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, in_channels=1, n_classes=15, encoder=encoder))
    save_model(workspace / f"models/{RUN}/model.pt", vit, params.run_config(params.run(RUN)))
    assert_user_error(evaluate(workspace), f"models/{RUN}/model.pt", "VisionTransformer")
    assert_nothing_written(workspace)


def test_another_runs_model(workspace: Path) -> None:
    message = assert_user_error(evaluate(workspace, run=OTHER_RUN), f"models/{RUN}", f"trained for run {RUN}")
    assert OTHER_RUN in message
    assert_nothing_written(workspace)
    from mlflow.tracking import MlflowClient

    trained_run = json.loads((workspace / f"models/{RUN}/train.json").read_text())["mlflow_run_id"]
    logged = MlflowClient(f"sqlite:///{workspace / 'mlruns/mlflow.db'}").get_run(trained_run).data.metrics
    assert logged and not any(key.startswith("test_") for key in logged)  # nothing was logged into RUN's run


def test_a_model_trained_with_other_params(workspace: Path) -> None:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    raw["model"]["pose3d"]["dropout"] = 0.3
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    assert_user_error(evaluate(workspace), f"models/{RUN}", "model.dropout", "rerun `flexheads train`")
    assert_nothing_written(workspace)


def test_missing_statistics(workspace: Path) -> None:
    (workspace / STATS).unlink()
    assert_user_error(evaluate(workspace), STATS, "not found")
    assert_nothing_written(workspace)


# --- divergence -------------------------------------------------------------------------------------------


def test_divergence_is_one_line_a_failed_run_and_an_all_finite_checkpoint(workspace: Path) -> None:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    raw["experiment"]["regimes"] = ["radam"]
    raw["regimes"]["radam"]["lr"] = 1e6
    raw["train"]["pose3d"].update(checkpoint_every=1, steps=50)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    run = "pose3d-standard-radam-0"
    assert_user_error(train(workspace, run=run), run, "at step", "checkpoint")
    assert not (workspace / "models/new/model.pt").exists()
    payload = torch.load(workspace / "models/new/checkpoint.pt", weights_only=True)
    tensors = [*payload["model"].values(),
               *(v for state in payload["optimizer"]["state"].values() for v in state.values())]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert run_statuses(workspace)[run] == ["FAILED"]


# --- params.yaml ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "key"), [
    (lambda raw: raw["train"]["pose3d"].update(steps=True), "train.pose3d.steps"),
    (lambda raw: raw["regimes"]["noam"].update(lr=float("inf")), "regimes.noam.lr"),
    (lambda raw: raw["regimes"].update({"a/b": raw["regimes"]["noam"]}), "regimes.a/b"),
])
def test_params_that_do_not_fit_the_schema(workspace: Path, edit, key: str) -> None:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    edit(raw)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    assert_user_error(train(workspace), "params.yaml", key, one_line=False)
    assert_nothing_written(workspace)
