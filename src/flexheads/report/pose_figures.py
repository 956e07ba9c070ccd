"""Pose figure kinds, from the evaluate stage's files under ``metrics/``, each drawn for the task it is given:

* ``skeletons_3d`` (e.g. ``pose3d_skeletons``): test examples of the task's best run (by its main metric), ground
  truth and prediction as 3D skeletons (``examples.npz``: ``pred``/``target (K, J, 3)`` mm root-relative in the
  camera frame, ``parents (J,)``, ``actions (K,)``);
* ``skeletons_2d`` (e.g. ``pose2d_skeletons``): image crops of the task's best run with the labelled ground-truth
  and the predicted keypoints (``examples.npz``: ``images (K, H, W, 3)``, ``pred``/``target (K, J, 2)`` crop
  pixels, ``visible (K, J)``, ``skeleton (B, 2)``);
* ``per_joint`` (``<task>_per_joint``): runs × joints heat map of the task's ``per_joint`` breakdown
  (``per_joint.csv``, columns and direction from its ``REPORT_BREAKDOWNS``: e.g. pose3d MPJPE (mm), pose2d
  PCKh@0.5 (%)).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from flexheads.config import Params
from flexheads.report.inputs import best_run, main_metric, read_npz, read_table, task_runs
from flexheads.report.style import SMALL_FONT, run_label
from flexheads.tasks import get_task

GROUND_TRUTH, PREDICTION = "0.15", "C1"
EXAMPLE_COLUMNS = 4


def _grid(k: int) -> tuple[int, int]:
    """Rows and columns for ``k`` panels, at most ``EXAMPLE_COLUMNS`` wide, rows as full as possible."""
    rows = math.ceil(k / EXAMPLE_COLUMNS)
    return rows, math.ceil(k / rows)


def _skeleton_legend(figure: plt.Figure, gt_label: str, loc: str = "outside lower center") -> None:
    handles = [Line2D([], [], color=GROUND_TRUTH, lw=2, marker="o", ms=4, label=gt_label),
               Line2D([], [], color=PREDICTION, lw=2, ls="--", marker="o", ms=4, label="prediction")]
    figure.legend(handles=handles, loc=loc, ncols=2)


def camera_to_upright(points: np.ndarray) -> np.ndarray:
    """Camera-frame points ``(..., 3)`` (x right, y down, z away from the camera, as Human3.6M's) as the
    ``(x, depth, up)`` = ``(x, z, -y)`` that mplot3d draws with its third axis pointing up."""
    return points[..., [0, 2, 1]] * np.array([1.0, 1.0, -1.0])


def skeletons_inputs(params: Params, task: str, metrics_dir: Path) -> list[Path]:
    """Every run's metrics JSON (to find the best) and ``examples.npz`` (evaluate writes it for every run)."""
    runs = task_runs(params, task)
    return [metrics_dir / f"{r.name}.json" for r in runs] + [metrics_dir / r.name / "examples.npz" for r in runs]


def skeletons_3d_figure(params: Params, task: str, metrics_dir: Path) -> plt.Figure:
    run, score = best_run(params, task, metrics_dir, f"{task}_skeletons")
    ex = read_npz(metrics_dir / run.name / "examples.npz", ("pred", "target", "parents", "actions"))
    upright = {k: camera_to_upright(ex[k]) for k in ("pred", "target")}
    rows, cols = _grid(len(ex["pred"]))
    height = 3.4 * rows + 1.0
    figure = plt.figure(figsize=(3.2 * cols, height))  # constrained layout misjudges 3D axes: placed by hand
    figure.subplots_adjust(left=0.02, right=0.96, top=1 - 0.6 / height, bottom=0.45 / height, wspace=0.12,
                           hspace=0.12)
    half = 0.5 * max(np.ptp(np.concatenate([upright["pred"][i], upright["target"][i]]), axis=0).max()
                     for i in range(len(ex["pred"])))
    for i in range(len(ex["pred"])):
        ax = figure.add_subplot(rows, cols, i + 1, projection="3d")
        for key, colour, ls in (("target", GROUND_TRUTH, "-"), ("pred", PREDICTION, "--")):
            pose = upright[key][i]
            for joint, parent in enumerate(ex["parents"]):
                if parent >= 0:
                    ax.plot(*pose[[joint, parent]].T, color=colour, ls=ls, lw=2)
            ax.scatter(*pose.T, color=colour, s=8, depthshade=False)
        centre = upright["target"][i].mean(0)
        for set_lim, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            set_lim(c - half, c + half)
        ax.set_box_aspect((1, 1, 1), zoom=1.1)
        ax.view_init(elev=12, azim=-65)
        error = np.linalg.norm(ex["pred"][i] - ex["target"][i], axis=-1).mean()
        ax.set_title(f"{ex['actions'][i]}, MPJPE {error:.0f} mm", y=0.98)
        ax.set_xlabel("x (mm)", labelpad=-4)
        ax.set_ylabel("depth (mm)", labelpad=-4)
        ax.set_zlabel("up (mm)", labelpad=-4)
        ax.tick_params(labelsize=SMALL_FONT, pad=-2)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(plt.MaxNLocator(3))
    _skeleton_legend(figure, "ground truth", loc="lower center")
    metric = main_metric(task)
    figure.suptitle(f"{task}: test poses of the best run, {run.name} ({metric.header} {score:.1f} {metric.unit})",
                    y=1 - 0.2 / height)
    return figure


def skeletons_2d_figure(params: Params, task: str, metrics_dir: Path) -> plt.Figure:
    run, score = best_run(params, task, metrics_dir, f"{task}_skeletons")
    ex = read_npz(metrics_dir / run.name / "examples.npz", ("images", "pred", "target", "visible", "skeleton"))
    rows, cols = _grid(len(ex["images"]))
    height, width = ex["images"].shape[1:3]
    panel = 2.4
    figure, axes = plt.subplots(rows, cols, figsize=(panel * cols * width / height + 0.4, panel * rows + 0.9),
                                squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(ex["images"]):
            continue
        ax.imshow(ex["images"][i])
        visible = ex["visible"][i]
        for a, b in ex["skeleton"]:
            if visible[a] and visible[b]:
                ax.plot(*ex["target"][i][[a, b]].T, color="white", lw=3.2, solid_capstyle="round")
                ax.plot(*ex["target"][i][[a, b]].T, color=GROUND_TRUTH, lw=1.8, solid_capstyle="round")
            ax.plot(*ex["pred"][i][[a, b]].T, color=PREDICTION, lw=1.4, ls="--")
        ax.scatter(*ex["target"][i][visible].T, s=10, color=GROUND_TRUTH, edgecolors="white", linewidths=0.5,
                   zorder=3)
        ax.scatter(*ex["pred"][i].T, s=8, color=PREDICTION, zorder=4)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    _skeleton_legend(figure, "ground truth (labelled joints)")
    metric = main_metric(task)
    figure.suptitle(f"{task}: test crops ({width}×{height} px) of the best run,\n"
                    f"{run.name} ({metric.header} {score:.3f})")
    return figure


HEAT_MAPS = {  # the per-joint breakdown's direction: (scale, unit added to its label, colour map)
    "min": (1.0, "", "rocket_r"),  # errors (MPJPE, mm)
    "max": (100.0, " (%)", "mako"),  # fractions of joints found (PCKh), shown as percent
}


def per_joint_inputs(params: Params, task: str, metrics_dir: Path) -> list[Path]:
    return [metrics_dir / r.name / "per_joint.csv" for r in task_runs(params, task)]


def per_joint_figure(params: Params, task: str, metrics_dir: Path) -> plt.Figure:
    # the columns and direction the report's per-joint table uses (the task's REPORT_BREAKDOWNS)
    _, joint_column, value_column, label, better = next(
        b for b in get_task(task).REPORT_BREAKDOWNS if b[0] == "per_joint")
    scale, unit, cmap = HEAT_MAPS[better]
    higher_better = better == "max"
    label = f"{label}{unit}, {'higher' if higher_better else 'lower'} is better"
    runs = task_runs(params, task)
    tables = [read_table(p, [joint_column, value_column]) for p in per_joint_inputs(params, task, metrics_dir)]
    joints = list(tables[0][joint_column])
    matrix = pd.DataFrame([t.set_index(joint_column)[value_column].reindex(joints) * scale for t in tables],
                          index=[run_label(r, runs) for r in runs], columns=joints)
    annotate = matrix.shape[0] <= 30
    figure, ax = plt.subplots(figsize=(0.55 * len(joints) + 3.5, 0.36 * len(runs) + 2.4), layout="constrained")
    sns.heatmap(matrix, ax=ax, cmap=cmap, annot=annotate, fmt=".0f", annot_kws={"fontsize": SMALL_FONT},
                linewidths=0.5, linecolor="white", cbar_kws={"label": label, "shrink": 0.9},
                vmin=0 if higher_better else None, vmax=100 if higher_better else None)
    ax.grid(False)
    ax.set_facecolor("0.85")  # NaN cells (a joint never labelled in the test set) show as grey
    ax.set_xlabel("joint")
    ax.set_ylabel("run")
    ax.tick_params(axis="x", labelrotation=60, labelsize=SMALL_FONT + 1)
    ax.tick_params(axis="y", labelsize=SMALL_FONT + 1)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    blank = " (grey: joint never labelled)" if matrix.isna().any().any() else ""
    figure.suptitle(f"{task}: per-joint {label.split(',')[0]} of every run{blank}")
    return figure
