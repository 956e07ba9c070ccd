"""What the report reads: the train and evaluate stages' files, checked before anything is written.

A table or figure whose inputs are incomplete raises :class:`MissingInputs` (a ``DataError``) naming
every missing path, so the report never silently drops a run: the tables call :func:`require`, ``write_figures``
checks every figure's inputs before drawing any.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flexheads.config import Params, Run
from flexheads.errors import DataError
from flexheads.tasks import get_task


class MissingInputs(DataError):
    """Stage outputs the report needs are missing; ``missing`` maps each path to the tables or figures that need
    it."""

    def __init__(self, missing: dict[Path, list[str]]) -> None:
        self.missing = missing
        lines = [f"{path}  (for {', '.join(figures)})" for path, figures in missing.items()]
        super().__init__("the report needs every run of the matrix; missing files (run the stages that write "
                         "them):\n  "
                         + "\n  ".join(lines))


def require(paths: Iterable[Path], needed_by: str) -> None:
    """Raise :class:`MissingInputs` listing every path of ``paths`` that does not exist (``needed_by``: the table or
    figure that reads them)."""
    missing = [Path(p) for p in paths if not Path(p).exists()]
    if missing:
        raise MissingInputs({path: [needed_by] for path in missing})


def task_runs(params: Params, task: str, *, baselines: bool = True) -> list[Run]:
    """The runs of ``task`` in matrix order (then its baselines)."""
    runs = params.all_runs() if baselines else params.runs()
    return [r for r in runs if r.task == task]


def first_of_each(runs: Sequence[Run], key: Callable[[Run], str]) -> list[Run]:
    """The first run (in matrix order: the first seed) of each value of ``key``, in order of appearance."""
    firsts: dict[str, Run] = {}
    for run in runs:
        firsts.setdefault(key(run), run)
    return list(firsts.values())


def pick_regime(params: Params) -> str:
    """Pre-LN if the matrix has it (the regime that trains reliably everywhere), else its first regime."""
    return "preln" if "preln" in params.experiment.regimes else params.experiment.regimes[0]


@dataclass(frozen=True)
class MainMetric:
    key: str  # key in metrics/<run>.json, and history.csv's column is ``val_<key>``
    header: str  # as the tables print it
    unit: str
    lower_is_better: bool


def main_metric(task: str) -> MainMetric:
    """The task's ``MAIN_METRIC`` as its ``REPORT_COLUMNS`` present it."""
    module = get_task(task)
    key = module.MAIN_METRIC
    header, better = next((h, b) for k, h, b in module.REPORT_COLUMNS if k == key)
    return MainMetric(key, header, module.MAIN_METRIC_UNIT, better == "min")


def best_run(params: Params, task: str, metrics_dir: Path, figure: str) -> tuple[Run, float]:
    """The run of ``task`` (baselines included) with the best main metric in ``metrics/<run>.json``."""
    runs = task_runs(params, task)
    metric = main_metric(task)
    scores = {}
    for run in runs:
        value = json.loads((metrics_dir / f"{run.name}.json").read_text()).get(metric.key)
        if value is not None and np.isfinite(value):
            scores[run] = float(value)
    if not scores:
        raise ValueError(f"{figure}: no {task} run has a finite '{metric.key}' in {metrics_dir}")
    pick = min if metric.lower_is_better else max
    run = pick(scores, key=scores.__getitem__)
    return run, scores[run]


def read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an npz written by a stage; ``ValueError`` naming the file and the absent keys."""
    with np.load(path, allow_pickle=False) as npz:
        absent = [k for k in keys if k not in npz.files]
        if absent:
            raise ValueError(f"{path}: missing arrays {absent} (has {sorted(npz.files)})")
        return {k: npz[k] for k in keys}


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV written by a stage; ``ValueError`` naming the file and the absent columns."""
    frame = pd.read_csv(path)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: missing columns {absent} (has {list(frame.columns)})")
    return frame


def read_grad_histograms(path: Path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``(bin_edges_log10 (B+1,), {step: fraction of entries per bin (B,)})`` from ``grad_histograms.json``."""
    raw = json.loads(path.read_text())
    edges = np.asarray(raw["bin_edges_log10"], dtype=float)
    fractions = {}
    for step, counts in sorted(raw["counts"].items(), key=lambda item: int(item[0])):
        counts = np.asarray(counts, dtype=float)
        if len(counts) != len(edges) - 1:
            raise ValueError(f"{path}: step {step} has {len(counts)} counts for {len(edges) - 1} bins")
        total = counts.sum()
        fractions[int(step)] = counts / total if total > 0 else counts
    return edges, fractions
