"""Fault injection under the orchestrators: a training killed inside `dvc repro` followed by a change of the data
(the stale-resume trap), and `snakemake` itself killed with SIGKILL mid-run.  Each rerun must end where an
uninterrupted run of the final params ends: byte-identical models and metrics, no temporary file, no MLflow run
left RUNNING, and both doors clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dvc.utils.serialize import modify_yaml

from faults.harness import assert_no_running_run, partial_files, shim_env, tree_bytes
from test_orchestration import commit, make_project, run

pytestmark = pytest.mark.slow

RUN = "pose3d-standard-noam-0"
NEW_SEED = 7  # data.pose3d.synthetic.seed after the change


def pose3d_runs(raw: dict) -> None:
    raw["experiment"].update(tasks=["pose3d"], attention=["standard"], regimes=["noam"])
    raw["train"]["pose3d"].update(steps=20, checkpoint_every=10, log_every=5)


def with_new_data(raw: dict) -> None:
    pose3d_runs(raw)
    raw["data"]["pose3d"]["synthetic"]["seed"] = NEW_SEED


def results(project: Path) -> dict[str, bytes]:
    """What the DAG computed: every model file, history and metrics file (not the MLflow ids in train.json, not
    Snakemake's hidden folder timestamps)."""
    files = {**{f"models/{k}": v for k, v in tree_bytes(project / "models").items()
                if k.endswith(("model.pt", "history.csv", "grad_histograms.json"))},
             **{f"metrics/{k}": v for k, v in tree_bytes(project / "metrics").items()
                if not Path(k).name.startswith(".")}}
    assert files
    return files


def assert_clean(project: Path) -> None:
    assert "up to date" in run(["dvc", "status"], project) or "Data and pipelines are up to date" in run(
        ["dvc", "status"], project)
    assert "Nothing to be done" in run(["snakemake", "-n"], project)
    assert not partial_files(project)
    assert_no_running_run(project)
    assert not list((project / "models").rglob("checkpoint.pt"))
    assert not list((project / "models").rglob("mlflow_run_id"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """An uninterrupted `dvc repro` on the changed data."""
    project = make_project(tmp_path_factory.mktemp("reference") / "p", with_new_data)
    run(["dvc", "repro"], project)
    return results(project)


def test_a_checkpoint_of_old_data_is_never_resumed_by_dvc_repro(tmp_path: Path, reference: dict[str, bytes]) -> None:
    project = make_project(tmp_path / "p", pose3d_runs)
    killed = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True,
                            env=shim_env(tmp_path / "bin", "train", "call:torch.nn.utils:clip_grad_norm_:15"))
    assert killed.returncode != 0
    (checkpoint,) = (project / "models").rglob("checkpoint.pt")  # step 10 of the first training

    with modify_yaml(project / "params.yaml") as raw:
        raw["data"]["pose3d"]["synthetic"]["seed"] = NEW_SEED
    log = run(["dvc", "repro"], project)
    assert f"{checkpoint.relative_to(project)}: written for other prepared data; deleted" in log
    assert results(project) == reference  # trained from step 0 on the new data, not resumed on the old
    commit(project, "reproduced")
    assert_clean(project)


def test_snakemake_killed_mid_run_reruns_to_the_uninterrupted_result(tmp_path: Path,
                                                                    reference: dict[str, bytes]) -> None:
    project = make_project(tmp_path / "p", with_new_data)
    snakemake = subprocess.Popen(["snakemake", "--cores", "2"], cwd=project, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((project / "models").rglob("checkpoint.pt")) and snakemake.poll() is None:
        assert time.monotonic() < deadline, "no training reached its first checkpoint"
        time.sleep(0.05)
    os.killpg(snakemake.pid, signal.SIGKILL)  # snakemake and every job it started, as a power cut would
    snakemake.wait()
    assert snakemake.returncode == -signal.SIGKILL

    run(["snakemake", "--unlock"], project)  # what Snakemake asks for after a kill (its lock outlives it)
    run(["snakemake", "--cores", "2"], project)  # the profile's rerun-incomplete redoes the killed jobs
    assert results(project) == reference
    commit(project, "reproduced")
    assert_clean(project)
