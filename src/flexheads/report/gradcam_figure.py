"""The ``gradcam`` figure kind (e.g. ``cxr_gradcam``): for a fixed set of test lesions (the first test images with
a lesion mask), the image with its true lesion outlined, then each run's Grad-CAM map of that finding over it: one
row per run of the task it is drawn for.

Reads ``metrics/<run>/gradcam.npz`` of every run of the task (baselines aside); data without lesion masks (e.g.
real radiographs) has none, so when no run wrote maps there is no figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from flexheads.config import Params
from flexheads.report.inputs import read_npz, task_runs
from flexheads.report.style import run_label

GRADCAM_COLUMNS = 8  # lesions shown


def gradcam_inputs(params: Params, task: str, metrics_dir: Path) -> list[Path]:
    """Every ``task`` run's ``gradcam.npz``: all of them, or none (data without lesion masks)."""
    return [metrics_dir / r.name / "gradcam.npz" for r in task_runs(params, task, baselines=False)]


def gradcam_figure(params: Params, task: str, metrics_dir: Path) -> plt.Figure | None:
    """The overlays (module docstring); None when no ``task`` run wrote Grad-CAM maps (data without lesion
    masks)."""
    runs = task_runs(params, task, baselines=False)
    paths = gradcam_inputs(params, task, metrics_dir)
    if not any(p.exists() for p in paths):
        return None
    arrays = [read_npz(p, ("images", "maps", "masks", "findings")) for p in paths]
    first = arrays[0]
    n = min(GRADCAM_COLUMNS, len(first["findings"]))
    figure, axes = plt.subplots(1 + len(runs), n, figsize=(1.3 * n + 1.6, 1.3 * (1 + len(runs)) + 0.6),
                                squeeze=False, layout="constrained")
    for j in range(n):
        axes[0, j].imshow(first["images"][j], cmap="gray", vmin=0, vmax=255)
        axes[0, j].contour(first["masks"][j], levels=[0.5], colors="red", linewidths=0.8)
        axes[0, j].set_title(str(first["findings"][j]).replace("_", " "), fontsize=8)
        for i, maps in enumerate(arrays, start=1):
            axes[i, j].imshow(maps["images"][j], cmap="gray", vmin=0, vmax=255)
            axes[i, j].imshow(maps["maps"][j], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].contour(maps["masks"][j], levels=[0.5], colors="white", linewidths=0.6)
    for i, ax_row in enumerate(axes):
        label = "true lesion" if i == 0 else run_label(runs[i - 1], runs).replace(" · ", "\n")
        ax_row[0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    scale = ScalarMappable(Normalize(0, 1), cmap="jet")  # the overlays' colours without their transparency
    figure.colorbar(scale, ax=axes, shrink=0.5, label="Grad-CAM (0–1)")
    figure.suptitle(f"{task}: Grad-CAM of the true finding (jet), true lesion outlined (red / white)")
    return figure
