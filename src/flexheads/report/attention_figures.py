"""Attention maps of one fixed test input (thesis fig. 3.17), from the evaluate stage's
``metrics/<run>/attention.npz`` (``weights (layers, heads, N, N)``, ``tokens (N,)``, ``grid (2,)``, ``image``):
two figure kinds, each drawn for the task it is given.

* ``attention`` (every task's ``<task>_attention``): one row per attention variant of one regime, the last layer's
  first heads as N×N query × key heat maps, beside the input: 2D points when the tokens form no grid (``grid``
  ``(0, 0)``) and ``image`` is ``(K, 2)`` (e.g. pose3d's 2D joints, with their bones when the tokens name a known
  skeleton's joints), else an image (e.g. a person crop or a radiograph);
* ``cls_attention`` (e.g. ``cxr_attention_cls``): the CLS token's attention to the patches, reshaped to the patch
  grid and laid over the (grey-scale) image.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.ticker import MaxNLocator

from flexheads.config import Params, Run
from flexheads.data import h36m
from flexheads.report.inputs import first_of_each, pick_regime, read_npz, task_runs
from flexheads.report.style import SMALL_FONT

HEADS_SHOWN = 4
TOKEN_LABELS_UP_TO = 24  # name every token on the axes only when they stay readable
KEYS = ("weights", "tokens", "grid", "image")
SKELETONS = {h36m.JOINT_NAMES: h36m.PARENTS}  # point tokens' joint names → each joint's parent (-1: the root)


def attention_runs(params: Params, task: str) -> tuple[str, list[Run]]:
    """The regime shown and its first run (first seed) of each attention variant of the matrix."""
    regime = pick_regime(params)
    runs = [r for r in task_runs(params, task, baselines=False) if r.regime == regime]
    return regime, first_of_each(runs, lambda r: r.attention)


def attention_inputs(params: Params, task: str, metrics_dir: Path) -> list[Path]:
    return [metrics_dir / r.name / "attention.npz" for r in attention_runs(params, task)[1]]


def _read(params: Params, task: str, metrics_dir: Path) -> tuple[str, list[Run], list[dict]]:
    regime, runs = attention_runs(params, task)
    return regime, runs, [read_npz(p, KEYS) for p in attention_inputs(params, task, metrics_dir)]


def _head_width(params: Params, task: str, attention: str) -> int:
    return params.heads[task][attention].shape(getattr(params.model, task).d_model)[1]


def _is_points(image: np.ndarray, grid: np.ndarray) -> bool:
    """Whether the record's input is 2D points ``(K, 2)`` (tokens without a grid) rather than an image."""
    return int(np.prod(grid)) == 0 and image.ndim == 2 and image.shape[1] == 2


def _draw_input(ax: plt.Axes, image: np.ndarray, grid: np.ndarray, tokens: np.ndarray) -> None:
    """The input of an attention record: points (image pixels, y pointing down; bones too when the tokens name
    the joints of a skeleton of :data:`SKELETONS`) or an image."""
    if _is_points(image, grid):
        parents = SKELETONS.get(tuple(str(t) for t in tokens), ())
        for joint, parent in enumerate(parents):
            if parent >= 0:
                ax.plot(*image[[joint, parent]].T, color="0.3", lw=1.5)
        ax.scatter(*image.T, s=12, color="C3", zorder=3)
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_yaxis()
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    else:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    ax.set_title("input")


def attention_figure(params: Params, task: str, metrics_dir: Path) -> plt.Figure:
    regime, runs, arrays = _read(params, task, metrics_dir)
    weights = [a["weights"][-1, :HEADS_SHOWN] for a in arrays]  # last layer: (heads, N, N)
    heads = max(len(w) for w in weights)
    tokens = [str(t) for t in arrays[0]["tokens"]]
    n = len(tokens)
    named = n <= TOKEN_LABELS_UP_TO
    cell = 2.1 if named else 1.9
    mosaic = [["input"] + [f"{i},{h}" for h in range(heads)] for i in range(len(runs))]
    figure, axes = plt.subplot_mosaic(mosaic, figsize=(cell * (heads + 1) + 1.6, cell * len(runs) + 1.0),
                                      layout="constrained", width_ratios=[1.15] + [1] * heads)
    _draw_input(axes["input"], arrays[0]["image"], arrays[0]["grid"], arrays[0]["tokens"])
    norm = PowerNorm(0.5, vmin=0.0, vmax=max(float(w.max()) for w in weights))
    for i, (run, w) in enumerate(zip(runs, weights)):
        for h in range(heads):
            ax = axes[f"{i},{h}"]
            ax.grid(False)
            if h >= len(w):
                ax.set_visible(False)
                continue
            image = ax.imshow(w[h], cmap="magma", norm=norm, interpolation="nearest")
            if named:
                ax.set_xticks(range(n), tokens if i == len(runs) - 1 else [], rotation=90, fontsize=SMALL_FONT)
                ax.set_yticks(range(n), tokens if h == 0 else [], fontsize=SMALL_FONT)
            else:
                for axis in (ax.xaxis, ax.yaxis):
                    axis.set_major_locator(MaxNLocator(4, integer=True))
                if i < len(runs) - 1:
                    ax.set_xticklabels([])
                if h > 0:
                    ax.set_yticklabels([])
            if i == 0:
                ax.set_title(f"head {h + 1}")
            if i == len(runs) - 1:
                ax.set_xlabel("key" + ("" if named else " token index"))
            if h == 0:
                ax.set_ylabel(f"{run.name}\n{run.attention}, d_head = {_head_width(params, task, run.attention)}"
                              f"\nquery{'' if named else ' token index'}")
    figure.colorbar(image, ax=[axes[k] for k in axes if k != "input"], shrink=0.8,
                    label="attention probability (square-root scale)")
    figure.suptitle(f"{task}: last-layer attention of one evaluation input, regime {regime}, first {heads} heads"
                    + _token_note(arrays[0]["tokens"], arrays[0]["grid"]))
    return figure


def _token_note(tokens: np.ndarray, grid: np.ndarray) -> str:
    """What the token indices of a grid task are, for the title ('' for tokens without a grid)."""
    rows, cols = (int(x) for x in grid)
    if rows * cols == 0:
        return ""
    if rows * cols == len(tokens):
        return f"\n(tokens: the {rows}×{cols} feature grid, row-major)"
    cls, _ = _cls_and_patches(tokens, grid)
    return f"\n(token {cls}: {tokens[cls]}; the others: the {rows}×{cols} patches, row-major)"


def _cls_and_patches(tokens: np.ndarray, grid: np.ndarray) -> tuple[int, np.ndarray]:
    """Index of the ``CLS`` token and the patch tokens' indices in grid (row-major) order, as a ViT task's
    evaluate names them (e.g. cxr's: ``CLS``, then ``r{row}c{col}``)."""
    names = [str(t) for t in tokens]
    if "CLS" not in names or len(names) != int(np.prod(grid)) + 1:
        raise ValueError(f"attention.npz: expected a 'CLS' token and the {tuple(grid)} grid's patch tokens, "
                         f"got {len(names)} tokens")
    cls = names.index("CLS")
    return cls, np.array([i for i in range(len(names)) if i != cls])


def cls_attention_figure(params: Params, task: str, metrics_dir: Path) -> plt.Figure:
    regime, runs, arrays = _read(params, task, metrics_dir)
    heads = min(HEADS_SHOWN, min(a["weights"].shape[1] for a in arrays))
    columns = ["image"] + [f"head {h + 1}" for h in range(heads)] + ["mean of all heads"]
    figure, axes = plt.subplots(len(runs), len(columns), figsize=(1.9 * len(columns) + 1.4, 2.0 * len(runs) + 0.8),
                                squeeze=False, layout="constrained")
    for i, (run, a) in enumerate(zip(runs, arrays)):
        rows, cols = (int(x) for x in a["grid"])
        cls, patches = _cls_and_patches(a["tokens"], a["grid"])
        last = a["weights"][-1]  # (heads, N, N)
        maps = [last[h, cls, patches].reshape(rows, cols) for h in range(heads)]
        maps.append(last[:, cls, patches].mean(0).reshape(rows, cols))
        size = a["image"].shape
        for j, ax in enumerate(axes[i]):
            ax.imshow(a["image"], cmap="gray", vmin=0, vmax=255)
            if j:
                heat = maps[j - 1]
                ax.imshow(heat / heat.max() if heat.max() > 0 else heat, cmap="inferno", alpha=0.55,
                                    vmin=0, vmax=1, extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5),
                                    interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(columns[j])
        axes[i, 0].set_ylabel(f"{run.name}\n{run.attention}, d_head = {_head_width(params, task, run.attention)}")
    scale = ScalarMappable(Normalize(0, 1), cmap="inferno")  # the overlays' colours without their transparency
    figure.colorbar(scale, ax=axes, shrink=0.8, label="CLS attention / the map's maximum")
    figure.suptitle(f"{task}: last-layer attention of the CLS token to the {rows}×{cols} patches, regime {regime}")
    return figure
