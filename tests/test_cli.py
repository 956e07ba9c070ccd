"""The command line: user mistakes end in one line and exit code 2, `runs` lists the baselines, help texts name
runs with their seed, and `compare` prints the standard-vs-flexible table from metrics files alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flexheads.cli import app
from flexheads.config import load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "params.yaml")


def write_params(root: Path, **experiment: object) -> Path:
    """The repo's params.yaml with ``experiment`` overridden, written under ``root``."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(experiment)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("command", ["download", "prepare"])
def test_a_mistyped_task_is_one_line_naming_the_tasks(command, tmp_path):
    options = ["--out", str(tmp_path / "out")] + (
        ["--raw", str(tmp_path), "--stats", str(tmp_path / "s.json")] if command == "prepare" else [])
    result = CliRunner().invoke(app, [command, "pose3", "--params", PARAMS, *options])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: unknown task 'pose3'; tasks are: pose3d, pose2d, cxr"]


def test_runs_lists_the_matrix_then_the_baselines():
    result = CliRunner().invoke(app, ["runs", "--params", PARAMS])
    assert result.exit_code == 0
    names = result.output.split()
    assert names == [run.name for run in load_params(PARAMS).all_runs()]
    assert names[0] == "pose3d-standard-noam-0" and names[-1] == "pose3d-martinez_mlp"


@pytest.mark.parametrize("command", ["runs", "train", "evaluate"])
def test_help_names_runs_with_their_seed(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "<task>-<attention>-<regime>-<seed>" in result.output


def write_metrics(metrics_dir: Path, run: str, value: float) -> None:
    """``metrics/<run>.json`` and a ``samples.npz`` of 4 frames (2 actions, 4 sequences) each ``value`` mm off."""
    task, attention, regime, seed = run.split("-")
    (metrics_dir / run).mkdir(parents=True, exist_ok=True)
    (metrics_dir / f"{run}.json").write_text(json.dumps({
        "run": run, "task": task, "model": "transformer", "attention": attention, "regime": regime,
        "main_metric": "mpjpe", "mpjpe": value}))
    np.savez(metrics_dir / run / "samples.npz", mpjpe=np.full(4, value), action=np.arange(4) % 2, group=np.arange(4))


def test_compare_prints_the_summary_table_from_metrics_files(tmp_path):
    params = write_params(tmp_path, tasks=["pose3d"], attention=["standard", "flexible"], regimes=["noam", "preln"],
                          seeds=[0, 1])
    mpjpe = {("standard", "noam"): (60.0, 62.0), ("flexible", "noam"): (50.0, 54.0),
             ("standard", "preln"): (40.0, 40.0), ("flexible", "preln"): (38.0, 36.0)}
    for (attention, regime), values in mpjpe.items():
        for seed, value in enumerate(values):
            write_metrics(tmp_path / "metrics", f"pose3d-{attention}-{regime}-{seed}", value)

    result = CliRunner().invoke(app, ["compare", "--params", str(params), "--metrics-dir", str(tmp_path / "metrics")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "| task | metric | regime | standard | flexible | flexible − standard | vs best regime |" in lines
    # noam: flexible − standard per seed -10, -8; preln is the best regime (per seed, averaged over attention:
    # noam 55, 58 mm; preln 39, 38 mm), noam − preln per seed 16, 20. Every frame of a run is off by the same
    # amount, so every bootstrap resample gives the full-set difference: intervals of width 0, excluding 0. Paired
    # t-test over the 2 seeds: t = mean / (std / sqrt 2) = -9 / 1 → p 0.070; preln -3 / 1 → p 0.205: both above
    # 0.05, so no difference is significant (no *) and no regime is bold.
    assert ("| pose3d | MPJPE | noam | 61.0 ± 1.4 | 52.0 ± 2.8 | −9.00 ± 1.41 [−9.00, −9.00] p=0.07 "
            "| 18.00 ± 2.83 [18.00, 18.00] p=0.07 |") in lines
    assert ("| pose3d | MPJPE | preln | 40.0 ± 0.0 | 37.0 ± 1.4 | −3.00 ± 1.41 [−3.00, −3.00] p=0.2 "
            "| 0.0000 ± 0.0000 [0.0000, 0.0000] |") in lines


def test_compare_lists_every_missing_metrics_file_on_one_line(tmp_path):
    params = write_params(tmp_path, tasks=["pose3d"], attention=["standard", "flexible"], regimes=["noam"], seeds=[0])
    write_metrics(tmp_path / "metrics", "pose3d-standard-noam-0", 50.0)
    result = CliRunner().invoke(app, ["compare", "--params", str(params), "--metrics-dir", str(tmp_path / "metrics")])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: missing metrics files")
    assert str(tmp_path / "metrics" / "pose3d-flexible-noam-0.json") in line
    assert "pose3d-standard-noam-0.json" not in line
