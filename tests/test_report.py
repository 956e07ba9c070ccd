"""The report's tables: rows come from the metrics and train files, best values are marked, undefined metrics
are allowed, seeds give mean ± std, and a missing run stops the report with the list of missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flexheads.config import Params
from flexheads.data.cxr import LABELS
from flexheads.report.inputs import MissingInputs
from flexheads.report.tables import write_tables

REPO = Path(__file__).resolve().parents[1]


def cxr_params(attention: list[str], seeds: list[int]) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], attention=attention, regimes=["noam", "radam"], seeds=seeds)
    raw["baselines"] = {}
    return Params.model_validate(raw)


def write_run(root: Path, run: str, auroc: float, covid: float | None = 0.5) -> None:
    """The files train and evaluate write for ``run``; finding k's AUROC is ``auroc + k / 100``."""
    task, attention, regime, seed = run.split("-")
    metrics = {"run": run, "task": task, "model": "transformer", "attention": attention, "regime": regime,
               "mean_auroc": auroc, "mean_average_precision": 0.2, "mean_f1": 0.1, "auroc_covid19": covid,
               "pointing_game": 0.1, "cam_iou": 0.05, "pointing_game_uniform": 0.03}
    (root / "metrics" / run).mkdir(parents=True)
    (root / "metrics" / f"{run}.json").write_text(json.dumps(metrics))
    per_class = pd.DataFrame({"finding": LABELS, "auroc": [auroc + k / 100 for k in range(len(LABELS))]})
    per_class.loc[per_class["finding"] == "Hernia", "auroc"] = None  # no test positives: AUROC undefined
    per_class.to_csv(root / "metrics" / run / "per_class.csv", index=False)
    (root / "models" / run).mkdir(parents=True)
    (root / "models" / run / "train.json").write_text(json.dumps(
        {"n_params": 1000, "wall_time_s": 12.5, "cpu_time_s": 10.25, "steps_per_s": 48.0, "final_loss": 0.3,
         "mlflow_run_id": f"id-{regime}-{seed}"}))


def report(root: Path, params: Params) -> Path:
    write_tables(params, root / "metrics", root / "models", root / "reports")
    return root / "reports" / "tables"


def row(markdown: str, *cells: str) -> str:
    """The Markdown table row that starts with ``cells``."""
    start = "| " + " | ".join(cells) + " |"
    return next(line for line in markdown.splitlines() if line.startswith(start))


def test_table_rows_follow_the_metrics_files_and_mark_the_best(tmp_path):
    write_run(tmp_path, "cxr-standard-noam-0", auroc=0.71, covid=None)  # no COVID-19 positives in its test set
    write_run(tmp_path, "cxr-standard-radam-0", auroc=0.83, covid=0.9)
    tables = report(tmp_path, cxr_params(["standard"], [0]))
    markdown = (tables / "cxr.md").read_text()
    noam, radam = row(markdown, "transformer", "standard", "noam"), row(markdown, "transformer", "standard", "radam")
    assert "| 0.7100 |" in noam and "| **0.8300** |" in radam  # the higher AUROC is marked
    assert "| — |" in noam and "| 0.9000 |" in radam  # an undefined metric shows as a dash; one value is no "best"
    assert "id-radam-0" in radam
    assert "\\textbf{0.8300}" in (tables / "cxr.tex").read_text()
    assert pd.read_csv(tables / "cxr.csv")["mean_auroc"].tolist() == [0.71, 0.83]


def test_timing_columns_sit_beside_the_wall_time_and_the_caption_says_which_is_which(tmp_path):
    for regime in ("noam", "radam"):
        write_run(tmp_path, f"cxr-standard-{regime}-0", auroc=0.71)
    old = tmp_path / "models" / "cxr-standard-radam-0" / "train.json"  # written before cpu_time_s existed
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items()
                               if k not in ("cpu_time_s", "steps_per_s")}))
    tables = report(tmp_path, cxr_params(["standard"], [0]))
    markdown = (tables / "cxr.md").read_text()
    assert "| params | train time (s) | train CPU (s) | steps/s | final train loss | MLflow run |" in markdown
    assert "| 1000 | 12.5 | 10.2 | 48.0 | 0.3000 | id-noam-0 |" in row(markdown, "transformer", "standard", "noam")
    assert "| 1000 | 12.5 | — | — | 0.3000 | id-radam-0 |" in row(markdown, "transformer", "standard", "radam")
    caption = markdown.split("\n\n")[0]
    assert "Train time (s): wall-clock seconds" in caption and "waiting for a core" in caption
    assert "Train CPU (s): CPU seconds" in caption and "Steps/s: optimiser steps per wall-clock second" in caption
    assert "waiting for a core" in (tables / "cxr.tex").read_text()


def test_seeds_give_mean_and_std_and_paired_differences(tmp_path):
    auroc = {("standard", "noam"): (0.70, 0.72), ("flexible", "noam"): (0.75, 0.79),
             ("standard", "radam"): (0.80, 0.84), ("flexible", "radam"): (0.81, 0.83)}
    for (attention, regime), values in auroc.items():
        for seed, value in enumerate(values):
            write_run(tmp_path, f"cxr-{attention}-{regime}-{seed}", value)
    tables = report(tmp_path, cxr_params(["standard", "flexible"], [0, 1]))

    assert "| seed |" in (tables / "cxr.md").read_text()  # one row per seed in the task table
    summary = (tables / "summary.md").read_text()
    # noam: standard 0.71 ± 0.0141; flexible 0.77 ± 0.0283; flexible − standard per seed 0.05, 0.07;
    # radam is the best regime (mean over attention 0.82 vs 0.74), noam − radam per seed -0.08, -0.08;
    # radam: flexible − standard per seed +0.01, -0.01
    assert row(summary, "cxr", "mean AUROC", "noam") == (
        "| cxr | mean AUROC | noam | 0.7100 ± 0.0141 | 0.7700 ± 0.0283 | 0.0600 ± 0.0141 | -0.0800 ± 0.0000 |")
    assert row(summary, "cxr", "mean AUROC", "radam") == (
        "| cxr | mean AUROC | radam | **0.8200 ± 0.0283** | **0.8200 ± 0.0141** | 0.0000 ± 0.0141 | 0.0000 ± 0.0000 |")
    flat = pd.read_csv(tables / "summary.csv")
    assert flat.loc[flat["regime"] == "noam", "flexible − standard mean"].item() == pytest.approx(0.06)

    per_class = (tables / "cxr_per_class.md").read_text()  # mean over seeds, best run per finding in bold
    assert row(per_class, "flexible", "noam").startswith("| flexible | noam | 0.7700 | 0.7800 |")
    assert row(per_class, "standard", "radam").startswith("| standard | radam | **0.8200** | **0.8300** |")
    assert row(per_class, "flexible", "noam").endswith("| — | 0.9100 |")  # Hernia undefined in every run, COVID-19
    assert "\\resizebox" in (tables / "cxr_per_class.tex").read_text()  # 15 findings: scaled to the page


def test_a_column_of_equal_values_has_no_best(tmp_path):
    for regime, auroc in (("noam", 0.5), ("radam", 0.5)):
        write_run(tmp_path, f"cxr-standard-{regime}-0", auroc, covid=0.9 if regime == "noam" else 0.8)
    markdown = (report(tmp_path, cxr_params(["standard"], [0])) / "cxr.md").read_text()
    assert "**0.5000**" not in markdown  # both runs score 0.5: neither is better
    assert markdown.count("**0.2000**") == 0 and "**0.9000**" in markdown


def test_a_missing_run_lists_its_files(tmp_path):
    write_run(tmp_path, "cxr-standard-noam-0", auroc=0.71)
    with pytest.raises(MissingInputs, match="cxr-standard-radam-0.json") as error:
        report(tmp_path, cxr_params(["standard"], [0]))
    assert "models/cxr-standard-radam-0/train.json" in str(error.value)


def test_a_missing_breakdown_table_lists_its_file(tmp_path):
    for regime in ("noam", "radam"):
        write_run(tmp_path, f"cxr-standard-{regime}-0", auroc=0.71)
    (tmp_path / "metrics" / "cxr-standard-radam-0" / "per_class.csv").unlink()
    with pytest.raises(MissingInputs, match="metrics/cxr-standard-radam-0/per_class.csv"):
        report(tmp_path, cxr_params(["standard"], [0]))
