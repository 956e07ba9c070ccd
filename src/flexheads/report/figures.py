"""Every report figure, drawn from the stage outputs only (``models/<run>/``, ``metrics/<run>/``) and the library,
in one style (:mod:`flexheads.report.style`), as PNG and PDF under ``<out>/figures/``.

Names are ``<task>_<what>`` for task figures and plain for the task-independent ones (an HTML page groups them
by prefix); :func:`figure_plan` lists them in report order with the files each reads:

* ``positional_encoding``, ``noam_schedule``, ``warmup_comparison``: thesis figs. 3.13-3.15 (library only);
* per task of the matrix, in its order, the figures of :data:`COMMON_FIGURES` (``<task>_curves``,
  ``<task>_grad_histograms``, ``<task>_attention``), then the task's own: each task module declares
  ``REPORT_FIGURES``, pairs ``(suffix, kind)``, and figure ``<task>_<suffix>`` is drawn by the figure kind
  ``<kind>`` of :data:`FIGURE_KINDS`, given the task's name (e.g. pose3d's ``("skeletons", "skeletons_3d")``
  gives ``pose3d_skeletons``).

The kinds, each generic over the task it is given (the stage files it reads are in its module's docstring):

* ``curves``: training curves (``models/<run>/history.csv``);
* ``grad_histograms``: thesis fig. 3.16 (``models/<run>/grad_histograms.json``);
* ``attention``: thesis fig. 3.17, N×N attention maps (``metrics/<run>/attention.npz``);
* ``cls_attention``: the CLS token's attention over the patch grid (``attention.npz``);
* ``skeletons_3d`` / ``skeletons_2d``: the best run's test examples as 3D skeletons / keypoints over image crops
  (``metrics/<run>.json``, ``examples.npz``);
* ``per_joint``: runs × joints heat map of the task's per-joint breakdown (``per_joint.csv``);
* ``gradcam``: Grad-CAM maps over the true lesions (``gradcam.npz``; all-or-none: no figure on data without
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
from flexheads.tasks import get_task


@dataclass(frozen=True)
class FigureSpec:
    """One report figure: the stage outputs it reads and the function that draws it from them."""

    name: str
    draw: Callable[[], plt.Figure | None]  # None only when an all-or-none figure has no inputs at all
    inputs: list[Path] = field(default_factory=list)
    all_or_none: bool = False  # e.g. Grad-CAM: inputs exist for every run or (data without lesion masks) for none

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


@dataclass(frozen=True)
class FigureKind:
    """How one kind of task figure is drawn: ``draw(params, task, folder)`` and ``inputs(params, task, folder)``,
    ``folder`` the stage outputs it reads (``reads``: the evaluate stage's ``metrics`` or the train stage's
    ``models``)."""

    draw: Callable[[Params, str, Path], plt.Figure | None]
    inputs: Callable[[Params, str, Path], list[Path]]
    all_or_none: bool = False  # see FigureSpec
    reads: str = "metrics"


FIGURE_KINDS: dict[str, FigureKind] = {  # kind → how it is drawn; tasks name kinds in their REPORT_FIGURES
    "curves": FigureKind(training.curves_figure, training.curves_inputs, reads="models"),
    "grad_histograms": FigureKind(training.grad_histograms_figure, training.grad_histograms_inputs, reads="models"),
    "attention": FigureKind(attention.attention_figure, attention.attention_inputs),
    "cls_attention": FigureKind(attention.cls_attention_figure, attention.attention_inputs),
    "skeletons_3d": FigureKind(pose.skeletons_3d_figure, pose.skeletons_inputs),
    "skeletons_2d": FigureKind(pose.skeletons_2d_figure, pose.skeletons_inputs),
    "per_joint": FigureKind(pose.per_joint_figure, pose.per_joint_inputs),
    "gradcam": FigureKind(gradcam.gradcam_figure, gradcam.gradcam_inputs, all_or_none=True),
}
COMMON_FIGURES = (("curves", "curves"), ("grad_histograms", "grad_histograms"), ("attention", "attention"))


def task_figures(task: str) -> tuple[tuple[str, str], ...]:
    """``(suffix, kind)`` of every figure of ``task``: :data:`COMMON_FIGURES`, then its ``REPORT_FIGURES``."""
    figures = COMMON_FIGURES + tuple(get_task(task).REPORT_FIGURES)
    unknown = [kind for _, kind in figures if kind not in FIGURE_KINDS]
    if unknown:
        raise ValueError(f"{task}: REPORT_FIGURES names unknown figure kinds {unknown}; the kinds are: "
                         f"{', '.join(FIGURE_KINDS)}")
    return figures


def figure_plan(params: Params, metrics_dir: Path, models_dir: Path) -> list[FigureSpec]:
    """The report's figures for the matrix, in report order; planning reads no file."""
    plan = [
        FigureSpec("positional_encoding", thesis.positional_encoding_figure),
        FigureSpec("noam_schedule", thesis.noam_schedule_figure),
        FigureSpec("warmup_comparison", thesis.warmup_comparison_figure),
    ]
    folders = {"metrics": metrics_dir, "models": models_dir}
    for task in params.experiment.tasks:
        for suffix, name in task_figures(task):
            kind = FIGURE_KINDS[name]
            folder = folders[kind.reads]
            plan.append(FigureSpec(f"{task}_{suffix}", partial(kind.draw, params, task, folder),
                                   kind.inputs(params, task, folder), kind.all_or_none))
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
