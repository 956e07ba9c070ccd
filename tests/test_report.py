"""The report's tables: rows come from the metrics and train files, best values are marked, undefined metrics
are allowed, and a missing run stops the report with the list of missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flexheads.config import Params
from flexheads.report.tables import write_tables

REPO = Path(__file__).resolve().parents[1]


def cxr_params() -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], attention=["standard"], regimes=["noam", "radam"])
    raw["baselines"] = {}
    return Params.model_validate(raw)


def write_run(root: Path, run: str, auroc: float, covid: float | None) -> None:
    regime = run.rsplit("-", 1)[1]
    metrics = {"run": run, "task": "cxr", "model": "transformer", "attention": "standard", "regime": regime,
               "mean_auroc": auroc, "mean_average_precision": 0.2, "mean_f1": 0.1, "auroc_covid19": covid,
               "pointing_game": 0.1, "cam_iou": 0.05, "pointing_game_uniform": 0.03}
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / f"{run}.json").write_text(json.dumps(metrics))
    (root / "models" / run).mkdir(parents=True)
    (root / "models" / run / "train.json").write_text(json.dumps(
        {"n_params": 1000, "wall_time_s": 12.5, "final_loss": 0.3, "mlflow_run_id": f"id-{regime}"}))


def test_table_rows_follow_the_metrics_files_and_mark_the_best(tmp_path):
    write_run(tmp_path, "cxr-standard-noam", auroc=0.71, covid=None)  # no COVID-19 positives in its test set
    write_run(tmp_path, "cxr-standard-radam", auroc=0.83, covid=0.9)
    write_tables(cxr_params(), tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")
    lines = (tmp_path / "reports/tables/cxr.md").read_text().splitlines()
    noam, radam = (next(line for line in lines if f"| {regime} |" in line) for regime in ("noam", "radam"))
    assert "| 0.7100 |" in noam and "| **0.8300** |" in radam  # the higher AUROC is marked
    assert "| — |" in noam and "| **0.9000** |" in radam  # an undefined metric shows as a dash, never "best"
    assert "id-radam" in radam
    assert "\\textbf{0.8300}" in (tmp_path / "reports/tables/cxr.tex").read_text()


def test_a_missing_run_lists_its_files(tmp_path):
    write_run(tmp_path, "cxr-standard-noam", auroc=0.71, covid=0.9)
    with pytest.raises(FileNotFoundError, match="cxr-standard-radam.json") as error:
        write_tables(cxr_params(), tmp_path / "metrics", tmp_path / "models", tmp_path / "reports")
    assert "models/cxr-standard-radam/train.json" in str(error.value)
