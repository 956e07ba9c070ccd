"""The report's tables: rows come from the metrics and train files, best values are marked, undefined metrics
are allowed, seeds give mean ± std, and a missing run stops the report with the list of missing files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flexheads.config import Params
from flexheads.data.cxr import LABELS
from flexheads.report.inputs import MissingInputs
from flexheads.report.tables import summary_markdown, write_tables

from conftest import auroc_samples

REPO = Path(__file__).resolve().parents[1]


def cxr_params(attention: list[str], seeds: list[int]) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"].update(tasks=["cxr"], attention=attention, regimes=["noam", "radam"], seeds=seeds)
    raw["baselines"] = {}
    return Params.model_validate(raw)


def write_run(root: Path, run: str, auroc: float, covid: float | None = 0.5,
              samples: dict[str, np.ndarray] | None = None) -> None:
    """The files train and evaluate write for ``run``; finding k's AUROC is ``auroc + k / 100`` in per_class.csv,
    ``auroc`` in every finding of samples.npz (:func:`auroc_samples` unless ``samples`` are given)."""
    task, attention, regime, seed = run.split("-")
    metrics = {"run": run, "task": task, "model": "transformer", "attention": attention, "regime": regime,
               "mean_auroc": auroc, "mean_average_precision": 0.2, "mean_f1": 0.1, "auroc_covid19": covid,
               "pointing_game": 0.1, "cam_iou": 0.05, "pointing_game_uniform": 0.03}
    (root / "metrics" / run).mkdir(parents=True)
    (root / "metrics" / f"{run}.json").write_text(json.dumps(metrics))
    per_class = pd.DataFrame({"finding": LABELS, "auroc": [auroc + k / 100 for k in range(len(LABELS))]})
    per_class.loc[per_class["finding"] == "Hernia", "auroc"] = None  # no test positives: AUROC undefined
    per_class.to_csv(root / "metrics" / run / "per_class.csv", index=False)
    np.savez(root / "metrics" / run / "samples.npz", **(auroc_samples(auroc) if samples is None else samples))
    (root / "models" / run).mkdir(parents=True)
    (root / "models" / run / "train.json").write_text(json.dumps(
        {"n_params": 1000, "attention_flops": 65536, "wall_time_s": 12.5, "cpu_time_s": 10.25, "steps_per_s": 48.0,
         "final_loss": 0.3, "mlflow_run_id": f"id-{regime}-{seed}"}))


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
                               if k not in ("cpu_time_s", "steps_per_s", "attention_flops")}))
    tables = report(tmp_path, cxr_params(["standard"], [0]))
    markdown = (tables / "cxr.md").read_text()
    assert ("| params | attention FLOPs | train time (s) | train CPU (s) | steps/s | final train loss | MLflow run |"
            in markdown)
    assert "| 1000 | 65536 | 12.5 | 10.2 | 48.0 | 0.3000 | id-noam-0 |" in row(markdown, "transformer", "standard",
                                                                              "noam")
    assert "| 1000 | — | 12.5 | — | — | 0.3000 | id-radam-0 |" in row(markdown, "transformer", "standard", "radam")
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
    assert "| task | metric | regime | standard | flexible | flexible − standard | vs best regime |" in summary
    # noam: standard 0.71 ± 0.0141; flexible 0.77 ± 0.0283; flexible − standard per seed 0.05, 0.07: t = 0.06 /
    # (0.0141 / √2) = 6 on 1 degree of freedom, p = 1 − 2 atan(6) / π = 0.105; radam is the best regime (mean over
    # attention 0.82 vs 0.74), noam − radam per seed -0.08, -0.08 (no spread: no p); radam: flexible − standard
    # per seed +0.01, -0.01
    noam = row(summary, "cxr", "mean AUROC", "noam")
    assert noam.startswith("| cxr | mean AUROC | noam | 0.7100 ± 0.0141 | 0.7700 ± 0.0283 | 0.0600 ± 0.0141 [")
    assert "p=0.11 |" in noam and "| −0.0800 ± 0.0000 [" in noam and noam.count("p=") == 1
    radam = row(summary, "cxr", "mean AUROC", "radam")
    assert radam.startswith("| cxr | mean AUROC | radam | 0.8200 ± 0.0283 | 0.8200 ± 0.0141 | 0.0000 ± 0.0141 [")
    assert radam.endswith("| 0.0000 ± 0.0000 [0.0000, 0.0000] |")  # the best regime minus itself
    caption = summary.split("\n\n")[0]
    assert "mean ± std over seeds [0, 1]" in caption and "scipy.stats.ttest_rel" in caption
    assert "1000 resamples" in caption and "cxr: patients" in caption and "* marks" in caption
    flat = pd.read_csv(tables / "summary.csv").set_index("regime")
    assert flat.loc["noam", "flexible − standard"] == pytest.approx(0.06)
    assert flat.loc["noam", "flexible − standard std"] == pytest.approx(0.02 / 2**0.5)
    assert flat.loc["noam", "flexible − standard p"] == pytest.approx(0.10514, abs=1e-5)
    assert flat.loc["noam", "flexible − standard lo"] <= 0.06 <= flat.loc["noam", "flexible − standard hi"]
    assert flat.loc["noam", "flexible std"] == pytest.approx(0.02 * 2**0.5)

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


def test_differences_carry_intervals_and_only_significant_wins_are_marked(tmp_path):
    # every patient's pair is ranked perfectly (AUROC 1 on every resample) or tied (0.5 on every resample): the
    # differences are the same on every resample, so their intervals are single points
    tied = {**auroc_samples(0.5), "scores": np.zeros((20, len(LABELS)))}
    write_run(tmp_path, "cxr-standard-noam-0", 0.5, samples=tied)
    for run in ("cxr-flexible-noam-0", "cxr-standard-radam-0", "cxr-flexible-radam-0"):
        write_run(tmp_path, run, 1.0)
    tables = report(tmp_path, cxr_params(["standard", "flexible"], [0]))
    summary = (tables / "summary.md").read_text()
    assert row(summary, "cxr", "mean AUROC", "noam") == (
        "| cxr | mean AUROC | noam | 0.5000 | 1.0 | 0.5000 [0.5000, 0.5000]* | −0.2500 [−0.2500, −0.2500]* |")
    # radam beats noam on every resample: bold; its flexible − standard is 0: no mark
    assert row(summary, "cxr", "mean AUROC", "**radam**") == (
        "| cxr | mean AUROC | **radam** | 1.0 | 1.0 | 0.0000 [0.0000, 0.0000] | 0.0000 [0.0000, 0.0000] |")
    assert "seed 0;" in summary.split("\n\n")[0]
    flat = pd.read_csv(tables / "summary.csv").set_index("regime")
    assert flat.loc["noam", "flexible − standard significant"] and not flat.loc["radam", "vs best regime significant"]
    assert "flexible − standard p" not in flat.columns  # one seed: no t-test
    assert "\\textbf{radam}" in (tables / "summary.tex").read_text()


def test_a_win_whose_interval_holds_zero_is_neither_marked_nor_bold(tmp_path):
    # radam's positives each outrank one negative more than noam's: radam wins or ties on every resample (a tie
    # where that negative is not drawn), so the interval of noam − radam ends at 0: not significant
    for regime, auroc in (("noam", 0.7), ("radam", 0.8)):
        write_run(tmp_path, f"cxr-standard-{regime}-0", auroc)
    summary = (report(tmp_path, cxr_params(["standard"], [0])) / "summary.md").read_text()
    noam = row(summary, "cxr", "mean AUROC", "noam")
    assert noam.startswith("| cxr | mean AUROC | noam | 0.7000 | −0.1000 [−") and noam.endswith("] |")
    low, high = (float(v.replace("−", "-")) for v in noam.split("[")[1].split("]")[0].split(", "))
    assert low < 0 == high and "*" not in summary.split("\n\n", 1)[1]


def test_compare_needs_the_samples_and_refuses_samples_of_another_evaluation(tmp_path):
    for regime in ("noam", "radam"):
        write_run(tmp_path, f"cxr-standard-{regime}-0", auroc=0.71)
    params = cxr_params(["standard"], [0])
    assert "| cxr | mean AUROC | noam | 0.7100 | 0.0000 [0.0000, 0.0000] |" in summary_markdown(params,
                                                                                          tmp_path / "metrics")
    np.savez(tmp_path / "metrics" / "cxr-standard-radam-0" / "samples.npz", **auroc_samples(0.9))
    with pytest.raises(ValueError, match="cxr-standard-radam-0/samples.npz gives mean_auroc 0.9 but .* states 0.71"):
        summary_markdown(params, tmp_path / "metrics")
    (tmp_path / "metrics" / "cxr-standard-radam-0" / "samples.npz").unlink()
    with pytest.raises(MissingInputs, match="cxr-standard-radam-0/samples.npz"):
        summary_markdown(params, tmp_path / "metrics")
