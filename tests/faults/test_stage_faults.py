"""Fault injection on prepare, train and report under the CLI: each stage is killed with SIGKILL at a chosen moment
(before and after the first checkpoint, halfway through a checkpoint write, before an output's rename), then rerun.

Every rerun must write what an uninterrupted run writes, byte for byte, leave no temporary file, and leave no MLflow
run RUNNING (the killed attempt's run ends KILLED).  A checkpoint of other data is never resumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from faults.harness import (
    assert_killed,
    assert_no_running_run,
    assert_ok,
    file_bytes,
    flexheads,
    partial_files,
    run_statuses,
    tree_bytes,
)
from test_orchestration import make_project

pytestmark = pytest.mark.slow

RUN = "pose3d-standard-noam-0"
DATA = ["--data", "data/prepared/pose3d.h5"]
TRAIN_FILES = ["model.pt", "history.csv", "grad_histograms.json"]
# train.json keys that differ between two runs of the same config: the MLflow run and the timings
VARYING = ("mlflow_run_id", "wall_time_s", "cpu_time_s", "steps_per_s")


def one_pose3d_run(raw: dict) -> None:
    raw["experiment"].update(tasks=["pose3d"], attention=["standard"], regimes=["noam"])
    raw["train"]["pose3d"].update(steps=20, checkpoint_every=10, log_every=5)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pose3d project with its data downloaded and prepared, and one uninterrupted training (models/ref)."""
    root = make_project(tmp_path_factory.mktemp("faults") / "p", one_pose3d_run)
    assert_ok(flexheads(root, "tracking-init"))
    assert_ok(flexheads(root, "download", "pose3d", "--out", "data/raw/pose3d"))
    assert_ok(flexheads(root, "prepare", "pose3d", "--raw", "data/raw/pose3d", "--out", "data/prepared/pose3d.h5",
                        "--stats", "data/prepared/pose3d.stats.json"))
    assert_ok(flexheads(root, "train", RUN, *DATA, "--out", "models/ref", "--no-progress"))
    return root


def report_bytes(project: Path) -> dict[str, bytes]:
    """The report's outputs (tables, figures, plots, index.html), not the hidden files of a build or a run."""
    return {path: data for path, data in tree_bytes(project / "reports").items()
            if not any(part.startswith(".") for part in Path(path).parts)}


def train_record(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / "train.json").read_text()).items() if k not in VARYING}


def assert_same_training(project: Path, folder: str) -> None:
    assert file_bytes(project / "models" / folder, TRAIN_FILES) == file_bytes(project / "models/ref", TRAIN_FILES)
    assert train_record(project / "models" / folder) == train_record(project / "models/ref")
    assert sorted(p.name for p in (project / "models" / folder).iterdir()) == sorted([*TRAIN_FILES, "train.json"])


@pytest.mark.parametrize(("point", "checkpoint_step"), [
    ("call:torch.nn.utils:clip_grad_norm_:3", None),  # before the first checkpoint (step 10)
    ("call:torch.nn.utils:clip_grad_norm_:15", 10),  # after it
    ("write:checkpoint.pt:2", 10),  # halfway through writing the step-20 checkpoint
    ("rename:model.pt:1", 20),  # the last checkpoint written, model.pt complete but not yet in place
], ids=["before-first-checkpoint", "after-first-checkpoint", "during-checkpoint-write", "before-model-rename"])
def test_killed_training_reruns_to_the_uninterrupted_result(project: Path, point: str,
                                                            checkpoint_step: int | None) -> None:
    folder = point.replace(":", "-")
    out = ["--out", f"models/{folder}", "--no-progress"]
    assert_killed(flexheads(project, "train", RUN, *DATA, *out, point=point))
    checkpoint = project / "models" / folder / "checkpoint.pt"
    if checkpoint_step is None:
        assert not checkpoint.exists()
    else:
        assert torch.load(checkpoint, weights_only=True)["step"] == checkpoint_step
    assert (project / "models" / folder / "mlflow_run_id").exists()  # the killed attempt's run is RUNNING

    rerun = flexheads(project, "train", RUN, *DATA, *out)
    assert_ok(rerun)
    assert "deleted" not in rerun.stderr  # its own checkpoint is resumed
    assert_same_training(project, folder)
    assert not partial_files(project)
    assert_no_running_run(project)
    assert "KILLED" in run_statuses(project)[RUN]


def test_killed_prepare_reruns_to_the_same_file(project: Path, tmp_path: Path) -> None:
    reference = tree_bytes(project / "data/prepared")
    prepare = ["prepare", "pose3d", "--raw", "data/raw/pose3d", "--out", "data/prepared/pose3d.h5",
               "--stats", "data/prepared/pose3d.stats.json"]
    shutil.rmtree(project / "data/prepared")
    assert_killed(flexheads(project, *prepare, point="call:flexheads.tasks.pose3d:seal:1"))  # mid-write, file open
    assert not (project / "data/prepared/pose3d.h5").exists()
    assert partial_files(project)  # what SIGKILL leaves: the temporary file, never the target
    assert_ok(flexheads(project, *prepare))
    assert tree_bytes(project / "data/prepared") == reference
    assert not partial_files(project)


def test_killed_report_keeps_the_previous_report_and_reruns_to_it(project: Path) -> None:
    for run in (RUN, "pose3d-martinez_mlp"):
        out = "models/ref" if run == RUN else f"models/{run}"
        if run != RUN:
            assert_ok(flexheads(project, "train", run, *DATA, "--out", out, "--no-progress"))
        assert_ok(flexheads(project, "evaluate", run, *DATA, "--stats", "data/prepared/pose3d.stats.json",
                            "--model", out, "--out", f"metrics/{run}.json"))
    shutil.copytree(project / "models/ref", project / f"models/{RUN}", dirs_exist_ok=True)
    assert_ok(flexheads(project, "report"))
    previous = report_bytes(project)

    assert_killed(flexheads(project, "report", point="call:flexheads.report.html:write_index:1"))
    assert report_bytes(project) == previous  # the half-built report never replaced the old one
    assert_killed(flexheads(project, "report", point="call:flexheads.tracking:Tracker.log_artifact:2"))

    assert_ok(flexheads(project, "report"))
    assert report_bytes(project) == previous
    assert not partial_files(project)
    assert_no_running_run(project)
    assert run_statuses(project)["report"][-2:] == ["KILLED", "FINISHED"]
