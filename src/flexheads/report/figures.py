"""Report figures drawn from what the evaluate stage wrote (``metrics/<run>/*.npz``); PNG and PDF.

* ``cxr_gradcam``: for a fixed set of test lesions (the first test images with a lesion mask), the radiograph with
  its true lesion outlined, then each run's Grad-CAM map of that finding over it: one row per run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from flexheads.config import Params
from flexheads.io import atomic_path

GRADCAM_COLUMNS = 8  # lesions shown


def save_figure(figure: plt.Figure, base: Path) -> list[Path]:
    """``base.png`` (150 dpi) and ``base.pdf``, each written atomically; closes the figure."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = base.with_suffix(suffix)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            figure.savefig(f, format=suffix[1:], dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


def cxr_gradcam(params: Params, metrics_dir: Path, out_dir: Path) -> list[Path]:
    """Grad-CAM overlays of every cxr run on the same lesions (module docstring); ``[]`` when the data has no
    lesion masks (real radiographs), so no run wrote maps."""
    runs = [r for r in params.runs() if r.task == "cxr"]
    paths = [metrics_dir / r.name / "gradcam.npz" for r in runs]
    missing = [str(p) for p in paths if not p.exists()]
    if len(missing) == len(paths):
        return []
    if missing:
        raise FileNotFoundError("Grad-CAM maps missing for some cxr runs (rerun their evaluate stage):\n  "
                                + "\n  ".join(missing))
    arrays = [np.load(p) for p in paths]
    first = arrays[0]
    n = min(GRADCAM_COLUMNS, len(first["findings"]))
    figure, axes = plt.subplots(1 + len(runs), n, figsize=(1.3 * n, 1.3 * (1 + len(runs))), squeeze=False,
                                layout="constrained")
    for j in range(n):
        axes[0, j].imshow(first["images"][j], cmap="gray", vmin=0, vmax=255)
        axes[0, j].contour(first["masks"][j], levels=[0.5], colors="red", linewidths=0.8)
        axes[0, j].set_title(str(first["findings"][j]).replace("_", " "), fontsize=7)
        for i, (run, maps) in enumerate(zip(runs, arrays), start=1):
            axes[i, j].imshow(maps["images"][j], cmap="gray", vmin=0, vmax=255)
            axes[i, j].imshow(maps["maps"][j], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].contour(maps["masks"][j], levels=[0.5], colors="white", linewidths=0.6)
    for i, ax_row in enumerate(axes):
        ax_row[0].set_ylabel("true lesion" if i == 0 else f"{runs[i - 1].attention}\n{runs[i - 1].regime}",
                             fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("cxr: Grad-CAM of the true finding (jet), true lesion outlined", fontsize=9)
    return save_figure(figure, out_dir / "figures" / "cxr_gradcam")


def write_figures(params: Params, metrics_dir: Path, out_dir: Path) -> list[Path]:
    """Every report figure the matrix's outputs allow into ``<out>/figures/`` (made even when empty: a stage
    output); returns the written paths."""
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    return cxr_gradcam(params, metrics_dir, out_dir)
