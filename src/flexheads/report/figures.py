"""Every report figure, drawn from the stage outputs only (``models/<run>/``, ``metrics/<run>/``) and the library,
in one style (:mod:`flexheads.report.style`), as PNG and PDF under ``<out>/figures/``.

Names are ``<task>_<what>`` for task figures and plain for the task-independent ones (an HTML page groups them
by prefix); :func:`figure_plan` lists them in report order with the files each reads:

* ``positional_encoding``, ``noam_schedule``, ``warmup_comparison``: thesis figs. 3.13-3.15 (library only);
* per task of the matrix: ``<task>_curves`` (``history.csv``), ``<task>_grad_histograms`` (fig. 3.16,
  ``grad_histograms.json``), ``<task>_attention`` (fig. 3.17, ``attention.npz``);
* pose3d / pose2d: ``<task>_skeletons`` (the best run's ``examples.npz``), ``<task>_per_joint``
  (``per_joint.csv``);
* cxr: ``cxr_attention_cls`` (``attention.npz``), ``cxr_gradcam`` (``gradcam.npz``; no figure on data without
  lesion masks, where no run writes it).

Every input of every figure is checked before anything is drawn: one ``MissingInputs`` (a ``DataError``) lists them all.
"""

from __future__ import annotations

import shutil

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt

from flexheads.config import Params
from flexheads.io import atomic_path
from flexheads.report import attention_figures as attention
from flexheads.report import gradcam_figure as gradcam
from flexheads.report import pose_figures as pose
from flexheads.report import thesis_figures as thesis
from flexheads.report import training_figures as training
from flexheads.report.inputs import MissingInputs
from flexheads.report.style import figure_style


@dataclass(frozen=True)
class FigureSpec:
    """One report figure: the stage outputs it reads and the function that draws it from them."""

    name: str
    draw: Callable[[], plt.Figure | None]  # None only when an all-or-none figure has no inputs at all
    inputs: list[Path] = field(default_factory=list)
    all_or_none: bool = False  # cxr_gradcam: inputs exist for every run or (real radiographs) for none

    def missing(self) -> list[Path]:
        absent = [p for p in self.inputs if not p.exists()]
        return [] if self.all_or_none and len(absent) == len(self.inputs) else absent


REPRODUCIBLE_METADATA = {".png": {}, ".pdf": {"CreationDate": None}}  # no timestamp: same inputs, same bytes


def save_figure(figure: plt.Figure, base: Path) -> list[Path]:
    """``base.png`` (150 dpi) and ``base.pdf``, each written atomically and byte-reproducibly; closes the figure."""
    paths = []
    for suffix, metadata in REPRODUCIBLE_METADATA.items():
        path = base.with_suffix(suffix)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            figure.savefig(f, format=suffix[1:], dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(figure)
    return paths


def figure_plan(params: Params, metrics_dir: Path, models_dir: Path) -> list[FigureSpec]:
    """The report's figures for the matrix, in report order; planning reads no file."""
    plan = [
        FigureSpec("positional_encoding", thesis.positional_encoding_figure),
        FigureSpec("noam_schedule", thesis.noam_schedule_figure),
        FigureSpec("warmup_comparison", thesis.warmup_comparison_figure),
    ]
    for task in params.experiment.tasks:
        plan += [
            FigureSpec(f"{task}_curves", partial(training.curves_figure, params, task, models_dir),
                       training.curves_inputs(params, task, models_dir)),
            FigureSpec(f"{task}_grad_histograms", partial(training.grad_histograms_figure, params, task, models_dir),
                       training.grad_histograms_inputs(params, task, models_dir)),
            FigureSpec(f"{task}_attention", partial(attention.attention_figure, params, task, metrics_dir),
                       attention.attention_inputs(params, task, metrics_dir)),
        ]
        if task in ("pose3d", "pose2d"):
            skeletons = pose.pose3d_skeletons_figure if task == "pose3d" else pose.pose2d_skeletons_figure
            plan += [
                FigureSpec(f"{task}_skeletons", partial(skeletons, params, metrics_dir),
                           pose.skeletons_inputs(params, task, metrics_dir)),
                FigureSpec(f"{task}_per_joint", partial(pose.per_joint_figure, params, task, metrics_dir),
                           pose.per_joint_inputs(params, task, metrics_dir)),
            ]
        if task == "cxr":
            plan += [
                FigureSpec("cxr_attention_cls", partial(attention.cls_attention_figure, params, metrics_dir),
                           attention.attention_inputs(params, task, metrics_dir)),
                FigureSpec("cxr_gradcam", partial(gradcam.gradcam_figure, params, metrics_dir),
                           gradcam.gradcam_inputs(params, metrics_dir), all_or_none=True),
            ]
    return plan


def write_figures(params: Params, metrics_dir: Path, models_dir: Path, out_dir: Path) -> list[Path]:
    """Every figure of :func:`figure_plan` into ``<out>/figures/`` (made even when empty: a stage output); returns
    the written paths. Missing inputs raise one :class:`MissingInputs` naming each missing
    file and the figures that need it, before anything is drawn."""
    plan = figure_plan(params, metrics_dir, models_dir)
    missing: dict[Path, list[str]] = {}
    for spec in plan:
        for path in spec.missing():
            missing.setdefault(path, []).append(spec.name)
    if missing:
        raise MissingInputs(missing)
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with figure_style():
        for spec in plan:
            figure = spec.draw()
            if figure is not None:
                written += save_figure(figure, folder / spec.name)
    return written


def write_dvc_plots(params: Params, figures_dir: Path, plots_dir: Path) -> list[Path]:
    """Copies of each task's ``<task>_curves.png`` in ``<out>/plots/``, the folder ``dvc plots show`` renders as
    images (offline; a folder holding only the matrix's tasks, so no plot is ever missing)."""
    shutil.rmtree(plots_dir, ignore_errors=True)
    plots_dir.mkdir(parents=True)
    written = []
    for task in params.experiment.tasks:
        source = figures_dir / f"{task}_curves.png"
        if source.exists():
            with atomic_path(plots_dir / source.name) as tmp:
                shutil.copyfile(source, tmp)
            written.append(plots_dir / source.name)
    return written
