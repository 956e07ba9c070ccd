"""Figures of how the runs trained, from the train stage's ``models/<run>/`` files: the figure kinds every task
gets (:data:`flexheads.report.figures.COMMON_FIGURES`), each drawn for the task it is given.

* ``grad_histograms`` (``<task>_grad_histograms``, thesis fig. 3.16): the distribution of log10|gradient| over all
  parameters at the snapshot steps (``grad_histograms.json``), one panel per attention configuration (row) and
  regime (column), each the first seed's run;
* ``curves`` (``<task>_curves``): smoothed training loss (labelled with the task's ``LOSS_LABEL``) and, where the
  run evaluated during training, the held-out main metric against the step (``history.csv``), every run of the
  task on the same axes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from flexheads.config import Params, Run
from flexheads.report.inputs import (
    first_of_each,
    main_metric,
    read_grad_histograms,
    read_table,
    task_runs,
)
from flexheads.report.style import run_colour, run_legend_handles, run_linestyle
from flexheads.tasks import get_task

def grad_histogram_runs(params: Params, task: str) -> tuple[list[Run], bool]:
    """One run per attention × regime (its first seed), in matrix order; True if that left other seeds out."""
    candidates = task_runs(params, task, baselines=False)
    runs = first_of_each(candidates, lambda r: f"{r.attention} {r.regime}")
    return runs, len(runs) < len(candidates)


def grad_histograms_inputs(params: Params, task: str, models_dir: Path) -> list[Path]:
    return [models_dir / r.name / "grad_histograms.json" for r in grad_histogram_runs(params, task)[0]]


def grad_histograms_figure(params: Params, task: str, models_dir: Path) -> plt.Figure:
    """A grid of panels: one row per attention configuration, one column per regime (``experiment`` order)."""
    runs, first_seeds = grad_histogram_runs(params, task)
    histograms = [read_grad_histograms(p) for p in grad_histograms_inputs(params, task, models_dir)]
    steps = sorted({s for _, fractions in histograms for s in fractions})
    colours = dict(zip(steps, sns.color_palette("flare", len(steps))))
    attentions, regimes = params.experiment.attention, params.experiment.regimes

    figure, axes = plt.subplots(len(attentions), len(regimes), figsize=(3.4 * len(regimes) + 2.2,
                                2.5 * len(attentions) + 0.7), sharex=True, sharey=True, squeeze=False,
                                layout="constrained")
    for run, (edges, fractions) in zip(runs, histograms):
        ax = axes[attentions.index(run.attention), regimes.index(run.regime)]
        for step, fraction in fractions.items():
            ax.stairs(fraction, edges, color=colours[step], lw=1.5)
        if first_seeds:
            ax.text(0.02, 0.97, f"seed {run.seed}", transform=ax.transAxes, va="top", fontsize="small")
    for regime, ax in zip(regimes, axes[0]):
        ax.set_title(regime)
    for ax in axes[-1]:
        ax.set_xlabel("log10 |gradient|")
    for attention, ax in zip(attentions, axes[:, 0]):
        ax.set_ylabel(f"{attention}\nfraction of entries")
    handles = [Line2D([], [], color=colours[s], lw=2, label=str(s)) for s in steps]
    figure.legend(handles=handles, title="training step", loc="outside right upper")
    figure.suptitle(f"{task}: gradients of all parameters at early steps")
    return figure


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.3, 1, 2), on the ticks matplotlib's LogFormatter would label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (fewer at the start), so a curve starts where its data starts."""
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def curves_inputs(params: Params, task: str, models_dir: Path) -> list[Path]:
    return [models_dir / r.name / "history.csv" for r in task_runs(params, task)]


def curves_figure(params: Params, task: str, models_dir: Path) -> plt.Figure:
    runs = task_runs(params, task)
    metric = main_metric(task)
    val_column = f"val_{metric.key}"
    histories = [read_table(p, ["step", "loss"]) for p in curves_inputs(params, task, models_dir)]
    has_val = any(val_column in h and h[val_column].notna().any() for h in histories)
    window = max(5, max(len(h) for h in histories) // 50)

    figure, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11.5 if has_val else 7.0, 4.2), squeeze=False,
                                layout="constrained")
    loss_ax = axes[0, 0]
    for run, history in zip(runs, histories):
        style = {"color": run_colour(params, run), "ls": run_linestyle(run), "lw": 1.4}
        loss = history["loss"].to_numpy(dtype=float)
        loss_ax.plot(history["step"], moving_average(loss, window), **style)
        if has_val and val_column in history:
            evaluated = history[history[val_column].notna()]
            axes[0, 1].plot(evaluated["step"], evaluated[val_column], marker="o", ms=3, **style)
    if all((h["loss"] > 0).all() for h in histories):
        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_formatter(PlainLogFormatter())
        loss_ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel(get_task(task).LOSS_LABEL)  # what the task's loss is, in its loss function's units
    loss_ax.set_title(f"training loss (moving average of {window} steps)")
    if has_val:
        axes[0, 1].set_xlabel("training step")
        axes[0, 1].set_ylabel(f"validation {metric.header}" + (f" ({metric.unit})" if metric.unit else ""))
        axes[0, 1].set_title(f"validation {metric.header} ({'lower' if metric.lower_is_better else 'higher'}"
                             " is better)")
    figure.legend(handles=run_legend_handles(params, runs), loc="outside right upper")
    figure.suptitle(f"{task}: training curves of every run ({len(runs)} runs)")
    return figure
