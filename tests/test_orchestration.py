"""Snakemake and DVC describe the same DAG, run it to the same numbers, and DVC reruns only what changed.

These run the real `snakemake`, `dvc` and MLflow on a copy of the project with a tiny params.yaml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flexheads.config import load_params

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "pipeline", "src", ".dvcignore"]


def make_project(dest: Path, edit=None) -> Path:
    """A git + DVC project at ``dest`` with the repo's pipeline files and a tiny, fast params.yaml."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    (dest / "profiles").symlink_to("pipeline/profiles")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"]["regimes"] = ["noam", "tfixup"]
    raw["data"]["pose3d"]["synthetic"]["frames_per_sequence"] = 30
    raw["model"]["pose3d"].update(d_model=16, n_heads=2, d_head_flexible=16, n_layers=1, d_ff=32)
    raw["train"]["pose3d"].update(steps=20, batch_size=32, checkpoint_every=10, log_every=5)
    if edit:
        edit(raw)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    return dest


def run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc_stages(project: Path) -> dict[str, tuple[str, set[str]]]:
    """stage name → (command, outputs) of every resolved DVC stage.

    DVC needs separate stages for the baselines (``train_baseline@martinez_mlp``, a ``foreach`` beside the
    ``matrix``); Snakemake's train rule covers them as ``train@pose3d-martinez_mlp``: named here as Snakemake does.
    """
    from dvc.repo import Repo

    baseline_tasks = {run.baseline: run.task for run in load_params(project / "params.yaml").baseline_runs()}
    stages = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            kind, _, key = stage.name.partition("@")
            if kind.endswith("_baseline"):
                kind, key = kind.removesuffix("_baseline"), f"{baseline_tasks[key]}-{key}"
            name = f"{kind}@{key}" if key else kind
            stages[name] = (" ".join(stage.cmd.split()), {str(out.def_path) for out in stage.outs})
    return stages


def snakemake_jobs(project: Path) -> dict[str, tuple[str, set[str]]]:
    """DVC-style stage name → (command, outputs) of every job of a forced Snakemake dry run."""
    text = run(["snakemake", "--dry-run", "--forceall", "--printshellcmds", "--cores", "1"], project)
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        shell = re.search(r"^Shell command: (.*?)(?: > logs/\S+ 2>&1)?$", block, re.M) or re.search(
            r"^\s{4}(flexheads .*?)(?: > logs/\S+ 2>&1)?$", block, re.M
        )
        if not rule or rule.group(1) == "all" or not shell:
            continue
        outputs = set(re.search(r"output: (.*)", block).group(1).split(", "))
        wildcards = re.search(r"wildcards: \w+=(\S+)", block)
        name = rule.group(1) + (f"@{wildcards.group(1)}" if wildcards else "")
        jobs[name] = (" ".join(shell.group(1).split()), outputs)
    return jobs


def test_snakemake_and_dvc_list_the_same_stages(tmp_path):
    project = make_project(tmp_path / "p")
    dvc = dvc_stages(project)
    smk = snakemake_jobs(project)
    assert set(dvc) == set(smk)
    for name, (cmd, outs) in dvc.items():
        assert smk[name] == (cmd, outs), name
    runs = {r.name for r in load_params(project / "params.yaml").all_runs()}
    assert {n.split("@")[1] for n in dvc if n.startswith("train@")} == runs


def metrics_of(project: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((project / "metrics").glob("*.json"))}


@pytest.mark.slow
def test_snakemake_and_dvc_produce_identical_metrics_and_mlflow_runs(tmp_path):
    smk = make_project(tmp_path / "smk")
    run(["snakemake", "--cores", "2"], smk)
    dvc = make_project(tmp_path / "dvc")
    run(["dvc", "repro"], dvc)

    assert metrics_of(smk) and metrics_of(smk) == metrics_of(dvc)
    for project in (smk, dvc):
        table = (project / "reports/tables/pose3d.md").read_text()
        assert all(r.name.split("-", 1)[1].split("-")[0] in table for r in load_params(project / "params.yaml").runs())

    # parallel Snakemake trainings all reached the SQLite store, each as one run with tags and metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smk / 'mlruns/mlflow.db'}")
    experiment = client.get_experiment_by_name("pose3d")
    mlflow_runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in mlflow_runs) == sorted(p.stem for p in (smk / "metrics").glob("*.json"))
    for r in mlflow_runs:
        assert r.info.status == "FINISHED"
        assert {"task", "attention", "regime", "git_commit", "params_hash"} <= set(r.data.tags)
        assert "test_mpjpe" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 20


@pytest.mark.slow
def test_dvc_reruns_only_the_stages_a_params_edit_touches(tmp_path):
    project = make_project(tmp_path / "p")
    run(["dvc", "repro"], project)
    assert "Running stage" not in run(["dvc", "repro"], project)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["regimes"]["tfixup"]["lr"] = 1e-4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = set(re.findall(r"Running stage '([^']+)'", run(["dvc", "repro"], project)))
    assert rerun == {
        "train@pose3d-standard-tfixup", "train@pose3d-flexible-tfixup",
        "evaluate@pose3d-standard-tfixup", "evaluate@pose3d-flexible-tfixup", "report",
    }
    assert "Running stage" not in run(["dvc", "repro"], project)
