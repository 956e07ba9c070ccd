"""Comparison tables per task: one row per run, best value per column marked; Markdown, LaTeX and CSV.

Reads only what the train and evaluate stages wrote (``metrics/<run>.json``, ``models/<run>/train.json``):
the DAG is the truth.  A run of the matrix without its files stops the report with the list of missing
files; no row is ever dropped silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from flexheads.config import Params
from flexheads.io import write_text
from flexheads.stages import task_module

RUN_COLUMNS = [  # (key in train.json, header, better)
    ("n_params", "params", None),
    ("wall_time_s", "train time (s)", None),
    ("final_loss", "final train loss", None),
    ("mlflow_run_id", "MLflow run", None),
]


def collect(params: Params, task: str, metrics_dir: Path, models_dir: Path) -> pd.DataFrame:
    """One row per run of ``task``: its metrics JSON merged with its train summary."""
    runs = [r for r in params.all_runs() if r.task == task]
    paths = {r.name: (metrics_dir / f"{r.name}.json", models_dir / r.name / "train.json") for r in runs}
    missing = [str(p) for pair in paths.values() for p in pair if not p.exists()]
    if missing:
        raise FileNotFoundError(
            "the report needs every run of the matrix; missing files (run their train/evaluate stages):\n  "
            + "\n  ".join(missing)
        )
    rows = [{**json.loads(m.read_text()), **json.loads(t.read_text())} for m, t in paths.values()]
    return pd.DataFrame(rows)


def comparison_table(frame: pd.DataFrame, task: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The table's columns (formatted strings) and, per column, the run whose value is best (none for a column
    whose metric no run defines, e.g. AUROC of a test set without positives)."""
    columns = [("model", "model", None), ("attention", "attention", None), ("regime", "regime", None),
               *task_module(task).REPORT_COLUMNS, *RUN_COLUMNS]
    table = pd.DataFrame({header: frame[key] for key, header, _ in columns})
    best = {}
    for key, header, better in columns:
        values = pd.to_numeric(frame[key], errors="coerce")  # null where a metric is undefined on this data
        if better is not None and values.notna().any():
            best[header] = values.idxmin() if better == "min" else values.idxmax()
    return table, best


def to_markdown(table: pd.DataFrame, best: dict[str, int], caption: str) -> str:
    cells = [[_format(v) for v in row] for row in table.itertuples(index=False)]
    for header, index in best.items():
        j = list(table.columns).index(header)
        cells[index][j] = f"**{cells[index][j]}**"
    lines = [f"| {' | '.join(table.columns)} |", f"|{'|'.join('---' for _ in table.columns)}|"]
    lines += [f"| {' | '.join(row)} |" for row in cells]
    return f"{caption}\n\n" + "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, best: dict[str, int], caption: str, label: str) -> str:
    cells = [[_latex_escape(_format(v)) for v in row] for row in table.itertuples(index=False)]
    for header, index in best.items():
        j = list(table.columns).index(header)
        cells[index][j] = f"\\textbf{{{cells[index][j]}}}"
    align = "lll" + "r" * (len(table.columns) - 3)
    body = "\n".join(" & ".join(row) + r" \\" for row in cells)
    header = " & ".join(_latex_escape(c) for c in table.columns) + r" \\"
    return (
        "\\begin{table}[t]\n\\centering\n\\small\n"
        f"\\caption{{{_latex_escape(caption)}}}\n\\label{{{label}}}\n"
        f"\\begin{{tabular}}{{{align}}}\n\\toprule\n{header}\n\\midrule\n{body}\n\\bottomrule\n"
        "\\end{tabular}\n\\end{table}\n"
    )


def write_tables(params: Params, metrics_dir: Path, models_dir: Path, out_dir: Path) -> list[Path]:
    """``<out>/tables/<task>.{md,tex,csv}`` for every task of the matrix; returns the written paths."""
    written = []
    for task in params.experiment.tasks:
        frame = collect(params, task, metrics_dir, models_dir)
        table, best = comparison_table(frame, task)
        caption = task_module(task).REPORT_CAPTION
        base = out_dir / "tables" / task
        write_text(base.with_suffix(".md"), to_markdown(table, best, caption))
        write_text(base.with_suffix(".tex"), to_latex(table, best, caption, f"tab:{task}"))
        write_text(base.with_suffix(".csv"), frame.to_csv(index=False))
        written += [base.with_suffix(s) for s in (".md", ".tex", ".csv")]
    return written


def _format(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text
