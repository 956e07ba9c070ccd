"""The report's tables, each as Markdown, LaTeX (booktabs) and CSV under ``reports/tables/``.

* ``<task>``: one row per run (attention × regime × seed, then the baselines), the task's headline metrics,
  parameter count, train time (wall clock), train CPU time, steps per second, final loss and MLflow run id; the
  best value per column in bold.  Its caption is the task's ``REPORT_CAPTION`` and ``TIMING_NOTE``.
* ``summary``: across tasks, per regime: the main metric of each attention configuration, the difference of
  every pair of configurations and each regime − the task's best regime, each difference with its 95% paired
  bootstrap interval and significance mark (:mod:`flexheads.report.uncertainty`, from ``metrics/<run>/samples.npz``)
  and, over the seeds of ``experiment.seeds``, mean ± std and a paired t-test.
* ``<task>_<breakdown>``: one row per attention × regime (mean over seeds), one column per action, joint or
  finding (the task's ``REPORT_BREAKDOWNS``), best value per column in bold.

``flexheads compare`` prints the ``summary`` table from the metrics files alone (``summary_markdown``).

Reads only what the train and evaluate stages wrote (``metrics/<run>.json``, ``metrics/<run>/*.{csv,npz}``,
``models/<run>/train.json``): the DAG is the truth.  A run of the matrix without its files stops the report
with the list of missing files; no row is ever dropped silently.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from flexheads.config import Params
from flexheads.io import write_text
from flexheads.report.inputs import main_metric, require, task_runs
from flexheads.report.uncertainty import N_RESAMPLES, Bootstrap, Difference, bootstrap, difference
from flexheads.tasks import get_task

RUN_COLUMNS = [  # (key in train.json, or metrics/<run>.json for attention_flops; header, better)
    ("n_params", "params", None),
    ("attention_flops", "attention FLOPs", None),
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
    return pd.DataFrame(rows, dtype=object)  # a count absent from one run's file stays a count in the others


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


def task_bootstrap(params: Params, task: str, metrics_dir: Path) -> Bootstrap:
    """:func:`flexheads.report.uncertainty.bootstrap` of the task's matrix runs from ``metrics/<run>/samples.npz``;
    :class:`MissingInputs` lists every absent file, ``ValueError`` names a run whose samples do not give the main
    metric of its ``metrics/<run>.json`` (to its 4 decimals: files of two different evaluations)."""
    runs = task_runs(params, task, baselines=False)
    paths = {r.name: (metrics_dir / f"{r.name}.json", metrics_dir / r.name / "samples.npz") for r in runs}
    require([p for pair in paths.values() for p in pair], "summary")
    samples = {}
    for name, (_, npz) in paths.items():
        with np.load(npz, allow_pickle=False) as arrays:
            samples[name] = {key: arrays[key] for key in arrays.files}
    boot = bootstrap(samples, get_task(task).sample_metric)
    key = main_metric(task).key
    for name, (metrics_json, npz) in paths.items():
        stated, computed = json.loads(metrics_json.read_text()).get(key), boot.point[name]
        if (stated is None) != math.isnan(computed) or (stated is not None and abs(stated - computed) > 5.1e-5):
            raise ValueError(f"{npz} gives {key} {computed:.6g} but {metrics_json} states {stated}: rerun "
                             f"`flexheads evaluate` for {name}")
    return boot


def summary_table(params: Params, boots: dict[str, Bootstrap]) -> tuple[pd.DataFrame, Bold]:
    """Rows task × regime of the matrix runs: the main metric per attention configuration (in
    ``experiment.attention``'s order; over seeds ``(mean, std)``), a :class:`Difference` ``b − a`` for every
    configuration ``a`` listed before ``b`` (same regime and seed), and "vs best regime": the regime minus the
    task's best regime (best mean over attention and seeds), both averaged over attention.  Bold: the best regime's
    name, only when every other regime's "vs best regime" interval excludes 0."""
    attentions, seeds = params.experiment.attention, params.experiment.seeds
    pairs = [(a, b) for i, b in enumerate(attentions) for a in attentions[:i]]
    rows, bold = [], set()
    for task, boot in boots.items():
        metric = main_metric(task)
        name = {(r.attention, r.regime, r.seed): r.name for r in task_runs(params, task, baselines=False)}
        regimes = list(dict.fromkeys(regime for _, regime, _ in name))
        runs = partial(_runs_per_seed, name, seeds)
        overall = [np.mean([boot.point[n] for per_seed in runs(r, attentions) for n in per_seed]) for r in regimes]
        best = regimes[int((np.nanargmin if metric.lower_is_better else np.nanargmax)(overall))] \
            if not np.isnan(overall).all() else None
        start = len(rows)
        for regime in regimes:
            row = {"task": task, "metric": metric.header, "regime": regime}
            for a in attentions:
                values = [boot.point[name[a, regime, s]] for s in seeds]
                row[a] = mean_std(values) if len(seeds) > 1 else values[0]
            for a, b in pairs:
                row[f"{b} − {a}"] = difference(boot, runs(regime, (b,)), runs(regime, (a,)))
            row["vs best regime"] = difference(boot, runs(regime, attentions), runs(best, attentions)) \
                if best else Difference(math.nan, math.nan, math.nan, False)
            rows.append(row)
        others = [row["vs best regime"] for row in rows[start:] if row["regime"] != best]
        if others and all(d.significant for d in others):
            bold.add((start + regimes.index(best), 2))
    return pd.DataFrame(rows), bold


def _runs_per_seed(name: dict[tuple[str, str, int], str], seeds: tuple[int, ...], regime: str,
                   attentions: tuple[str, ...]) -> list[list[str]]:
    """Per seed, the names of the runs of ``regime`` with each of ``attentions`` (the runs a contrast averages)."""
    return [[name[a, regime, s] for a in attentions] for s in seeds]


def summary_caption(params: Params) -> str:
    """The ``summary`` table's caption: what the cells are, the bootstrap (B, resampling unit per task, percentile
    interval), the significance mark, the t-test over seeds, and what bold means."""
    seeds = params.experiment.seeds
    units = "; ".join(f"{task}: {get_task(task).SAMPLE_GROUP}" for task in params.experiment.tasks)
    cells = (f"mean ± std over seeds {list(seeds)}" if len(seeds) > 1
             else f"seed {seeds[0]}; list more seeds in experiment.seeds for mean ± std and a t-test")
    over_seeds = (" Differences are paired by seed: mean ± std of the per-seed differences, the interval that of the "
                  "seed-averaged difference (every seed's runs on the same resamples), and p the two-sided paired "
                  "t-test over seeds (scipy.stats.ttest_rel); with seeds, * also needs p < 0.05 (the interval "
                  "covers the test set's sampling noise, the t-test the training's)." if len(seeds) > 1 else "")
    return (f"Main metric per task and regime for each attention configuration ({cells}). 'b − a': configuration "
            "b minus configuration a in the same regime; 'vs best regime': the regime minus the task's best regime, "
            "both averaged over attention. Each difference: its value on the full test set [95% percentile "
            f"bootstrap interval: {N_RESAMPLES} resamples of the test set's groups, drawn with replacement, the same "
            f"resamples for every run of a task; groups: {units}]; * marks a significant difference (its interval "
            f"excludes 0), no difference is bold.{over_seeds} A regime in bold: the task's best regime, only where "
            "every other regime's 'vs best regime' interval excludes 0.")


def summary_flat(table: pd.DataFrame) -> pd.DataFrame:
    """The ``summary`` table's unformatted numbers (its CSV): ``(mean, std)`` cells as ``<column>`` and
    ``<column> std``; :class:`Difference` cells as ``<column>`` (the point, over seeds the mean),
    ``<column> lo``, ``<column> hi``, ``<column> significant`` and, over seeds, ``<column> std`` and ``<column> p``."""
    flat = {}
    for column in table.columns:
        first = table[column].iloc[0]
        if isinstance(first, Difference):
            parts = {"": "point", " lo": "low", " hi": "high", " significant": "significant"}
            if not math.isnan(first.std):
                parts |= {" std": "std", " p": "p"}
            flat |= {f"{column}{suffix}": [getattr(d, field) for d in table[column]] for suffix, field in parts.items()}
        elif isinstance(first, tuple):
            flat[column], flat[f"{column} std"] = zip(*table[column])
        else:
            flat[column] = table[column]
    return pd.DataFrame(flat)


def summary(params: Params, metrics_dir: Path) -> tuple[pd.DataFrame, Bold]:
    """The ``summary`` table and its bold cells from the ``metrics/<run>.json`` and ``metrics/<run>/samples.npz``
    of the matrix's transformer runs alone (no train summaries, no baselines); :class:`MissingInputs` lists every
    absent file of a task."""
    return summary_table(params, {task: task_bootstrap(params, task, metrics_dir) for task in params.experiment.tasks})


def summary_markdown(params: Params, metrics_dir: Path) -> str:
    """The ``summary`` table as Markdown (``flexheads compare``), from the files :func:`summary` reads."""
    return to_markdown(*summary(params, metrics_dir), summary_caption(params))


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
    tables, written = out_dir / "tables", []
    for task in params.experiment.tasks:
        module = get_task(task)
        frame = collect(params, task, metrics_dir, models_dir)
        table, bold = comparison_table(params, frame, task)
        written += write_table(tables / task, table, bold, f"{module.REPORT_CAPTION} {TIMING_NOTE}", csv=frame)
        for name, key, value, label, better in module.REPORT_BREAKDOWNS:
            table, bold = breakdown_table(params, task, name, key, value, better, metrics_dir)
            caption = f"{task}: {label} per {key.replace('_', ' ')} (test split; mean over seeds)."
            written += write_table(tables / f"{task}_{name}", table, bold, caption)

    table, bold = summary(params, metrics_dir)
    written += write_table(tables / "summary", table, bold, summary_caption(params), csv=summary_flat(table))
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
    """Numbers to 4 decimals below 1, one decimal above; ``(mean, std)`` as ``mean ± std``; a
    :class:`Difference` by :func:`_format_difference`; undefined as —."""
    if isinstance(value, Difference):
        return _format_difference(value)
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


def _format_difference(d: Difference) -> str:
    """``point [low, high]`` (over seeds ``mean ± std [low, high] p=…``), ``*`` after the interval when significant;
    4 decimals when every number is below 1, else 2; negative numbers with a minus sign (−)."""
    if math.isnan(d.point):
        return "—"
    n = 4 if max(abs(v) for v in (d.point, d.low, d.high) if not math.isnan(v)) < 1 else 2
    spread = "" if math.isnan(d.std) else f" ± {d.std:.{n}f}"
    p = "" if math.isnan(d.p) else f" p={d.p:.2g}"
    mark = "*" if d.significant else ""
    return f"{_signed(d.point, n)}{spread} [{_signed(d.low, n)}, {_signed(d.high, n)}]{mark}{p}"


def _signed(value: float, decimals: int) -> str:
    """``value`` to ``decimals`` with a minus sign (−) when negative; undefined as —."""
    return "—" if math.isnan(value) else f"{value:.{decimals}f}".replace("-", "−")


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("±", r"$\pm$"), ("−", r"$-$")):
        text = text.replace(char, escaped)
    return text
