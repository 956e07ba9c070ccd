"""The report's tables, each as Markdown, LaTeX (booktabs) and CSV under ``reports/tables/``.

* ``<task>``: one row per run (attention × regime × seed, then the baselines), the task's headline metrics,
  parameter count, train time (wall clock), train CPU time, steps per second, final loss and MLflow run id; the
  best value per column in bold.  Its caption is the task's ``REPORT_CAPTION`` and ``TIMING_NOTE``.
* ``summary``: across tasks, per regime: the main metric with standard and flexible heads and the two
  comparisons the thesis asks for, flexible − standard and each regime − the task's best regime, as
  mean ± std over the seeds of ``experiment.seeds`` (differences are paired by seed).
* ``<task>_<breakdown>``: one row per attention × regime (mean over seeds), one column per action, joint or
  finding (the task's ``REPORT_BREAKDOWNS``), best value per column in bold.

``flexheads compare`` prints the ``summary`` table from the metrics files alone (``summary_markdown``).

Reads only what the train and evaluate stages wrote (``metrics/<run>.json``, ``metrics/<run>/*.csv``,
``models/<run>/train.json``): the DAG is the truth.  A run of the matrix without its files stops the report
with the list of missing files; no row is ever dropped silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from flexheads.config import Params
from flexheads.io import write_text
from flexheads.report.inputs import main_metric, require, task_runs
from flexheads.tasks import get_task

RUN_COLUMNS = [  # (key in train.json, header, better)
    ("n_params", "params", None),
    ("wall_time_s", "train time (s)", None),
    ("cpu_time_s", "train CPU (s)", None),
    ("steps_per_s", "steps/s", None),
    ("final_loss", "final train loss", None),
    ("mlflow_run_id", "MLflow run", None),
]
TIMING_NOTE = (  # appended to each task table's caption: what the three timing columns measure
    "Train time (s): wall-clock seconds of training, summed over resumes; on a shared machine it mostly measures "
    "waiting for a core. Train CPU (s): CPU seconds the training process used (all its threads; the cost of the "
    "run). Steps/s: optimiser steps per wall-clock second of the process that trained last."
)
Bold = set[tuple[int, int]]  # (row, column) cells of a table to set in bold


def collect(params: Params, task: str, metrics_dir: Path, models_dir: Path) -> pd.DataFrame:
    """One row per run of ``task``: its metrics JSON merged with its train summary, and its seed."""
    runs = task_runs(params, task)
    paths = [(metrics_dir / f"{r.name}.json", models_dir / r.name / "train.json") for r in runs]
    require([p for pair in paths for p in pair], f"table {task}")
    rows = [{**json.loads(m.read_text()), **json.loads(t.read_text()), "seed": r.seed}
            for r, (m, t) in zip(runs, paths)]
    return pd.DataFrame(rows)


def best_cells(values: pd.DataFrame, better: dict[str, str | None]) -> Bold:
    """Per column with a direction (``"min"``/``"max"``), the rows of the best value (every tied row); no mark
    in a column where all defined values are equal (nothing is better) or none is defined (NaN, e.g. AUROC of a
    test set without positives)."""
    cells = set()
    for j, column in enumerate(values.columns):
        numbers = pd.to_numeric(values[column], errors="coerce").to_numpy(dtype=float)
        if better.get(column) is None or np.isnan(numbers).all() or np.nanmin(numbers) == np.nanmax(numbers):
            continue
        best = np.nanmin(numbers) if better[column] == "min" else np.nanmax(numbers)
        cells |= {(int(i), j) for i in np.flatnonzero(numbers == best)}
    return cells


def comparison_table(params: Params, frame: pd.DataFrame, task: str) -> tuple[pd.DataFrame, Bold]:
    """The per-task table (formatted later) and its best cells; a seed column only with more than one seed."""
    columns = [("model", "model", None), ("attention", "attention", None), ("regime", "regime", None),
               *([("seed", "seed", None)] if len(params.experiment.seeds) > 1 else []),
               *get_task(task).REPORT_COLUMNS, *RUN_COLUMNS]
    # a column of train.json written before a key existed (cpu_time_s, steps_per_s) shows as "—"
    table = pd.DataFrame({header: frame.get(key) for key, header, _ in columns}, index=frame.index)
    return table, best_cells(table, {header: better for _, header, better in columns})


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value) over seeds."""
    values = np.asarray(values, dtype=float)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summary_table(frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, Bold]:
    """Rows task × regime of the transformer runs: main metric with standard / flexible heads, the paired
    difference flexible − standard, and the regime's difference to the task's best regime (main metric
    averaged over attention, paired by seed); cells are ``(mean, std)`` over seeds.  Bold: per task, the
    best regime of each attention column."""
    rows, bold = [], set()
    for task, frame in frames.items():
        metric = main_metric(task)
        runs = frame[frame["model"] == "transformer"]
        by_seed = runs.pivot_table(index=["regime", "seed"], columns="attention", values=metric.key, aggfunc="first",
                                   dropna=False)  # keep undefined (null) metrics as NaN
        regimes = list(dict.fromkeys(runs["regime"]))
        per_seed_mean = by_seed.mean(axis=1).unstack("seed")  # regime × seed, averaged over attention
        pick = np.nanargmin if metric.lower_is_better else np.nanargmax
        best_regime = regimes[int(pick(per_seed_mean.loc[regimes].mean(axis=1).to_numpy()))]
        start = len(rows)
        for regime in regimes:
            cells = by_seed.loc[regime]
            row = {"task": task, "metric": metric.header, "regime": regime}
            for attention in ("standard", "flexible"):
                row[attention] = mean_std(cells[attention]) if attention in cells else (math.nan, math.nan)
            row["flexible − standard"] = (mean_std(cells["flexible"] - cells["standard"])
                                          if {"standard", "flexible"} <= set(cells) else (math.nan, math.nan))
            row["vs best regime"] = mean_std(per_seed_mean.loc[regime] - per_seed_mean.loc[best_regime])
            rows.append(row)
        block = pd.DataFrame(rows[start:])
        for j, attention in ((3, "standard"), (4, "flexible")):
            means = block[attention].map(lambda cell: cell[0])
            if means.notna().any():
                bold.add((start + int(means.idxmin() if metric.lower_is_better else means.idxmax()), j))
    return pd.DataFrame(rows), bold


def summary_caption(seeds: tuple[int, ...]) -> str:
    """The ``summary`` table's caption: mean ± std over ``seeds``, or the one seed."""
    if len(seeds) > 1:
        return (f"Main metric per task and regime with standard and flexible heads, mean ± std over seeds "
                f"{list(seeds)}; differences paired by seed ('vs best regime': the regime minus the task's best "
                "regime, both averaged over attention). Best regime per task in bold.")
    return (f"Main metric per task and regime with standard and flexible heads (seed {seeds[0]}; list more "
            "seeds in experiment.seeds for mean ± std). Best regime per task in bold.")


def summary_markdown(params: Params, metrics_dir: Path) -> str:
    """The ``summary`` table as Markdown from the ``metrics/<run>.json`` of the matrix's transformer runs alone
    (no train summaries, no baselines); :class:`MissingInputs` lists every absent file of every task."""
    runs = params.runs()
    paths = {run: metrics_dir / f"{run.name}.json" for run in runs}
    require(paths.values(), "summary")
    # summary_table keeps transformer rows: every matrix run is one, whether or not its file says so
    rows = {run: {"model": "transformer", **json.loads(path.read_text()), "seed": run.seed}
            for run, path in paths.items()}
    frames = {task: pd.DataFrame([row for run, row in rows.items() if run.task == task])
              for task in params.experiment.tasks}
    summary, bold = summary_table(frames)
    return to_markdown(summary, bold, summary_caption(params.experiment.seeds))


def breakdown_table(params: Params, task: str, name: str, key: str, value: str, better: str,
                    metrics_dir: Path) -> tuple[pd.DataFrame, Bold]:
    """Rows attention × regime (``value`` averaged over seeds), one column per ``key`` entry of the
    ``metrics/<run>/<name>.csv`` tables of the task's transformer runs."""
    runs = [r for r in params.runs() if r.task == task]
    paths = [metrics_dir / r.name / f"{name}.csv" for r in runs]
    require(paths, f"table {task}_{name}")
    long = pd.concat([pd.read_csv(p).assign(attention=r.attention, regime=r.regime) for r, p in zip(runs, paths)])
    wide = long.pivot_table(index=["attention", "regime"], columns=key, values=value, aggfunc="mean", sort=False,
                            dropna=False)  # a finding without test positives has no AUROC: a column of —
    wide = wide[list(dict.fromkeys(long[key]))]  # columns in the tables' order (actions, joints, findings)
    table = wide.reset_index()
    table.columns = [str(c).replace("_", " ") for c in table.columns]
    return table, best_cells(table, {c: better for c in table.columns[2:]})


def write_table(base: Path, table: pd.DataFrame, bold: Bold, caption: str,
                csv: pd.DataFrame | None = None) -> list[Path]:
    """``base.md``, ``base.tex`` and ``base.csv`` (``csv`` if given: the unformatted data)."""
    write_text(base.with_suffix(".md"), to_markdown(table, bold, caption))
    write_text(base.with_suffix(".tex"), to_latex(table, bold, caption, f"tab:{base.name}"))
    write_text(base.with_suffix(".csv"), (table if csv is None else csv).to_csv(index=False))
    return [base.with_suffix(s) for s in (".md", ".tex", ".csv")]


def write_tables(params: Params, metrics_dir: Path, models_dir: Path, out_dir: Path) -> list[Path]:
    """Every table of the module docstring into ``<out>/tables/``; returns the written paths."""
    tables, written, frames = out_dir / "tables", [], {}
    for task in params.experiment.tasks:
        module = get_task(task)
        frames[task] = frame = collect(params, task, metrics_dir, models_dir)
        table, bold = comparison_table(params, frame, task)
        written += write_table(tables / task, table, bold, f"{module.REPORT_CAPTION} {TIMING_NOTE}", csv=frame)
        for name, key, value, label, better in module.REPORT_BREAKDOWNS:
            table, bold = breakdown_table(params, task, name, key, value, better, metrics_dir)
            caption = f"{task}: {label} per {key.replace('_', ' ')} (test split; mean over seeds)."
            written += write_table(tables / f"{task}_{name}", table, bold, caption)

    summary, bold = summary_table(frames)
    flat = summary.copy()
    for column in ("standard", "flexible", "flexible − standard", "vs best regime"):
        flat[f"{column} mean"], flat[f"{column} std"] = zip(*summary[column])
        flat = flat.drop(columns=column)
    written += write_table(tables / "summary", summary, bold, summary_caption(params.experiment.seeds), csv=flat)
    return written


def to_markdown(table: pd.DataFrame, bold: Bold, caption: str) -> str:
    cells = _cells(table, bold, "**{}**", str)
    lines = [f"| {' | '.join(table.columns)} |", f"|{'|'.join('---' for _ in table.columns)}|"]
    lines += [f"| {' | '.join(row)} |" for row in cells]
    return f"{caption}\n\n" + "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, bold: Bold, caption: str, label: str) -> str:
    cells = _cells(table, bold, "\\textbf{{{}}}", _latex_escape)
    align = "".join("l" if table[c].map(lambda v: isinstance(v, str)).all() else "r" for c in table.columns)
    body = "\n".join(" & ".join(row) + r" \\" for row in cells)
    header = " & ".join(_latex_escape(c) for c in table.columns) + r" \\"
    tabular = (f"\\begin{{tabular}}{{{align}}}\n\\toprule\n{header}\n\\midrule\n{body}\n\\bottomrule\n"
               "\\end{tabular}")
    if len(table.columns) > 10:  # breakdowns: one column per joint, action or finding
        tabular = f"\\resizebox{{\\textwidth}}{{!}}{{%\n{tabular}}}"
    return (
        "\\begin{table}[t]\n\\centering\n\\small\n"
        f"\\caption{{{_latex_escape(caption)}}}\n\\label{{{label}}}\n{tabular}\n\\end{{table}}\n"
    )


def _cells(table: pd.DataFrame, bold: Bold, emphasis: str, escape: Callable[[str], str]) -> list[list[str]]:
    cells = [[escape(_format(v)) for v in row] for row in table.itertuples(index=False)]
    for i, j in bold:
        cells[i][j] = emphasis.format(cells[i][j])
    return cells


def _format(value: object) -> str:
    """Numbers to 4 decimals below 1, one decimal above; ``(mean, std)`` as ``mean ± std``; undefined as —."""
    if isinstance(value, tuple):
        mean, std = value
        if math.isnan(std) or math.isnan(mean):
            return _format(mean)
        decimals = 4 if max(abs(mean), std) < 1 else 1
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("±", r"$\pm$"), ("−", r"$-$")):
        text = text.replace(char, escaped)
    return text
