"""Data-parallel training under torchrun (flexheads.distributed): two CPU processes on gloo follow the one-process
loss curve, only rank 0 writes and tracks, and a two-process checkpoint resumes in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from flexheads.config import load_params
from flexheads.errors import ParamsError
from flexheads.distributed import World, relaunch, shard, world
from flexheads.tasks import BUILTIN_TASKS, get_task
from test_train_tasks import RUNS, tiny_params

INJECT = Path(__file__).parent / "faults" / "inject.py"
# Two ranks average two half-batch mean gradients where one process takes the whole batch's mean: the same value
# summed in another order, so the curves agree to float rounding (measured: 1e-7 of the largest loss in 20 steps).
CURVE_TOLERANCE = 1e-5


def test_shard_gives_each_rank_an_equal_contiguous_block_of_every_tensor():
    batch = (torch.arange(8).reshape(8, 1), {"mask": torch.arange(8) * 10})
    first, second = shard(batch, World(0, 2)), shard(batch, World(1, 2))
    assert first[0].flatten().tolist() == [0, 1, 2, 3] and second[0].flatten().tolist() == [4, 5, 6, 7]
    assert first[1]["mask"].tolist() == [0, 10, 20, 30] and second[1]["mask"].tolist() == [40, 50, 60, 70]
    assert shard(batch, World()) is batch


def test_world_comes_from_torchruns_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == World(0, 1, 0) and world().is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world() == World(3, 4, 1) and not world().is_main


def test_relaunch_runs_the_same_command_under_torchrun_each_rank_in_its_own_process(monkeypatch):
    started = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((argv, env)))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/flexheads", "train", "pose3d-standard-noam-0", "--out", "m"])
    monkeypatch.setenv("FLEXHEADS_WARM", "/tmp/flexheads-warm-x/socket")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    relaunch(1)
    assert started == []
    relaunch(3)
    (argv, env), = started
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                    "-m", "flexheads", "train", "pose3d-standard-noam-0", "--out", "m"]
    assert "FLEXHEADS_WARM" not in env and env["PATH"] == os.environ["PATH"]
    monkeypatch.setenv("WORLD_SIZE", "3")  # one of torchrun's processes: it trains
    relaunch(3)
    assert len(started) == 1


def test_a_batch_that_does_not_split_over_the_processes_is_refused_naming_both(tmp_path):
    raw = tiny_params().model_dump(mode="json")
    raw["train"]["pose3d"].update(batch_size=30, processes=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"train\.pose3d.*batch_size \(30\) must be a multiple of processes \(4\)"):
        load_params(tmp_path / "params.yaml")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """pose3d's and pose2d's tiny prepared data (cxr's ViT adds nothing the two do not test)."""
    root = tmp_path_factory.mktemp("ddp")
    params = tiny_params()
    for name in ("pose3d", "pose2d"):
        task = get_task(name)
        task.download(params.task_data(name), root / "raw" / name)
        task.prepare(params.task_data(name), root / "raw" / name, root / f"{name}.h5", root / f"{name}.stats.json")
    return root


def write_params(project: Path, name: str, processes: int, tracking: bool = False) -> Path:
    raw = tiny_params().model_dump(mode="json")
    raw["train"]["pose3d"].update(steps=20, checkpoint_every=10, log_every=5, eval_every=10)
    for task in BUILTIN_TASKS:
        raw["train"][task]["processes"] = processes
    raw["tracking"]["enabled"] = tracking
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(project: Path, params: Path, task: str, out: Path, *, kill_at_step: int | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``flexheads train`` of ``RUNS[task]``; with ``kill_at_step``, both ranks SIGKILLed at that step's gradient
    clipping (torchrun started on the fault injector, as `flexheads train` would start itself)."""
    args = ["train", RUNS[task], "--params", str(params), "--data", str(project / f"{task}.h5"), "--out", str(out),
            "--device", "cpu", "--no-progress"]
    if kill_at_step is None:
        command = [sys.executable, "-m", "flexheads", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(INJECT),
                   f"call:torch.nn.utils:clip_grad_norm_:{kill_at_step}", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FLEXHEADS_WARM": "off", **(env or {})})


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "history.csv")


@pytest.fixture(scope="module")
def curves(project) -> dict[str, Path]:
    """pose3d trained by one process, and by two under torchrun with MLflow tracking into a SQLite store."""
    one = project / "one"
    ok(train(project, write_params(project, "one", 1), "pose3d", one))
    two = project / "two"
    store = f"sqlite:///{project / 'mlflow.db'}"
    stdout = ok(train(project, write_params(project, "two", 2, tracking=True), "pose3d", two,
                      env={"MLFLOW_TRACKING_URI": store}))
    assert stdout.count("final loss") == 1, stdout  # rank 0 alone reports
    return {"one": one, "two": two, "store": store}


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(curves):
    one, two = history(curves["one"]), history(curves["two"])
    assert list(two["step"]) == list(one["step"]) == list(range(1, 21))
    assert (two["loss"] - one["loss"]).abs().max() <= CURVE_TOLERANCE * one["loss"].abs().max()
    assert (two["grad_norm"] - one["grad_norm"]).abs().max() <= CURVE_TOLERANCE * one["grad_norm"].abs().max()
    assert two["val_mpjpe"].dropna().size == 2  # rank 0 validated at steps 10 and 20, once each
    assert not (two["loss"] == one["loss"]).all()  # really two processes: float sums in another order


@pytest.mark.slow
def test_only_rank_zero_writes_and_tracks(curves):
    assert sorted(p.name for p in curves["two"].iterdir()) == ["grad_histograms.json", "history.csv", "model.pt",
                                                              "train.json"]
    client = MlflowClient(curves["store"])  # not mlflow.set_tracking_uri, which exports it to every later test
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = '{RUNS['pose3d']}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in steps) == list(range(1, 21))


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(project, curves):
    out = project / "resumed"
    killed = train(project, write_params(project, "two-killed", 2), "pose3d", out, kill_at_step=15)
    assert killed.returncode != 0 and (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    resumed = train(project, write_params(project, "one-resumes", 1), "pose3d", out)
    ok(resumed)
    assert "deleted" not in resumed.stderr  # the checkpoint was taken up, not thrown away
    rows, two, one = history(out), history(curves["two"]), history(curves["one"])
    pd.testing.assert_frame_equal(rows.iloc[:10], two.iloc[:10])  # steps 1-10 came from the two processes
    assert (rows["loss"] - one["loss"]).abs().max() <= CURVE_TOLERANCE * one["loss"].abs().max()


@pytest.mark.slow
def test_pose2d_trains_in_two_processes(project):
    """pose2d's loss calls its model's ``predict``, not ``forward``, and its trunk has BatchNorm."""
    out = project / "two-pose2d"
    ok(train(project, write_params(project, "two-pose2d", 2), "pose2d", out))
    assert len(history(out)) == tiny_params().train.pose2d.steps
