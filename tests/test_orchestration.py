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
from flexheads.report.figures import figure_plan

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
    raw["data"]["pose2d"]["synthetic"].update(n_train_images=6, n_val_images=4, image_size=[160, 120])
    raw["model"]["pose2d"].update(d_model=16, n_heads=2, d_head_flexible=16, n_layers=1, d_ff=32)
    raw["train"]["pose2d"].update(steps=4, batch_size=8, checkpoint_every=2, log_every=2, eval_batch_size=16)
    raw["data"]["cxr"].update(image_size=32)
    raw["data"]["cxr"]["synthetic"].update(n_patients=30, n_covid_images=8, image_size=64)
    raw["model"]["cxr"].update(d_model=16, n_heads=2, d_head_flexible=16, n_layers=1, d_ff=32)
    raw["train"]["cxr"].update(steps=4, batch_size=16, checkpoint_every=2, log_every=2, eval_batch_size=64)
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

    params = load_params(smk / "params.yaml")
    assert {m["task"] for m in metrics_of(smk).values()} == {"pose3d", "pose2d", "cxr"}
    assert metrics_of(smk) == metrics_of(dvc)
    figures = [spec.name for spec in figure_plan(params, smk / "metrics", smk / "models")]
    assert {"positional_encoding", "pose3d_attention", "pose2d_skeletons", "cxr_gradcam"} <= set(figures)
    for project in (smk, dvc):
        for task in params.experiment.tasks:
            table = (project / f"reports/tables/{task}.md").read_text()
            assert all(f"| {r.attention} | {r.regime} |" in table for r in params.runs() if r.task == task)
        assert (project / "reports/tables/summary.md").stat().st_size > 0
        for name in figures:  # every figure of the report, drawn from the DAG's outputs
            assert all((project / f"reports/figures/{name}{suffix}").stat().st_size > 0 for suffix in (".png", ".pdf"))
        page = (project / "reports/index.html").read_text()
        assert page.count("<img") >= len(figures) and "<table" in page

    # parallel Snakemake trainings all reached the SQLite store, each as one run with tags and metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smk / 'mlruns/mlflow.db'}")
    main_metric = {"pose3d": "test_mpjpe", "pose2d": "test_AP", "cxr": "test_mean_auroc"}
    for task in params.experiment.tasks:
        mlflow_runs = client.search_runs([client.get_experiment_by_name(task).experiment_id])
        expected = sorted(r.name for r in params.all_runs() if r.task == task)
        assert sorted(r.info.run_name for r in mlflow_runs) == expected
        steps = getattr(params.train, task).steps
        for r in mlflow_runs:
            assert r.info.status == "FINISHED"
            assert {"task", "attention", "regime", "seed", "git_commit", "params_hash"} <= set(r.data.tags)
            assert main_metric[task] in r.data.metrics
            assert len(client.get_metric_history(r.info.run_id, "loss")) == steps
    report_runs = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    assert len(report_runs) == 1 and report_runs[0].info.status == "FINISHED"
    assert "index.html" in {a.path for a in client.list_artifacts(report_runs[0].info.run_id)}


@pytest.mark.slow
def test_dvc_reruns_only_the_stages_a_params_edit_touches(tmp_path):
    project = make_project(tmp_path / "p")
    run(["dvc", "repro"], project)
    assert "Running stage" not in run(["dvc", "repro"], project)

    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    assert "pose3d-standard-noam-0.json" in run(["dvc", "metrics", "show"], project)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)  # history.csv loss curves
    assert "history.csv" in (tmp_path / "plots" / "index.html").read_text()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["regimes"]["tfixup"]["lr"] = 1e-4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = set(re.findall(r"Running stage '([^']+)'", run(["dvc", "repro"], project)))
    assert rerun == {f"{stage}@{task}-{attention}-tfixup-0" for stage in ("train", "evaluate")
                     for task in ("pose3d", "pose2d", "cxr") for attention in ("standard", "flexible")} | {"report"}
    assert "Running stage" not in run(["dvc", "repro"], project)
    changed = run(["dvc", "metrics", "diff"], project)  # against the commit: only the tfixup runs moved
    assert "tfixup" in changed and "-noam-0.json" not in changed
