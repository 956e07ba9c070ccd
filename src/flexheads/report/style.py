"""One look for every report figure: the seaborn theme, font sizes, and the colours and line styles of runs.

``figure_style()`` applies the theme through ``matplotlib.rc_context``, so nothing leaks into the caller's
matplotlib state; build *and* save a figure inside it (tick labels take their size when they are drawn).
Runs are coloured by regime (in ``params.experiment.regimes`` order, the same in every figure), drawn solid
for standard, dotted for flexible_matched and dashed for flexible attention, and baselines in grey.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.lines import Line2D

from flexheads.config import Params, Run

_FONT_SIZES = {  # points; legible at the 150 dpi PNG and in a PDF scaled to a page's width
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 13,
}
_RC = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "image.cmap": "viridis",
    "legend.frameon": False,
    "axes.titlelocation": "center",
    "axes.titleweight": "normal",
}

ATTENTION_LINESTYLES = {"standard": "-", "flexible_matched": ":", "flexible": "--", "none": "-"}
OTHER_ATTENTION_LINESTYLE = "-."  # a head configuration of another name
BASELINE_COLOUR = "0.45"
SMALL_FONT = 7  # dense labels only (joint names on a 17-token axis, heat map annotations)


@contextmanager
def figure_style() -> Iterator[None]:
    """The report's theme (seaborn ``whitegrid``, ``paper`` context, the font sizes above) for the block."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper"), **_FONT_SIZES, **_RC}
    with plt.rc_context(rc):
        yield


def regime_colours(params: Params) -> dict[str, tuple[float, float, float]]:
    """One colour-blind-safe colour per regime of the matrix (baselines' regimes included), stable order."""
    names = list(params.experiment.regimes)
    names += [b.regime for b in params.baselines.values() if b.regime not in names]
    palette = sns.color_palette("colorblind")  # 10 colours; grey (7) is the baselines', tan (5) is close to orange
    order = [0, 1, 2, 3, 4, 9, 8, 6, 5]
    return {name: palette[order[i % len(order)]] for i, name in enumerate(names)}


def run_colour(params: Params, run: Run) -> tuple[float, float, float] | str:
    return BASELINE_COLOUR if run.baseline else regime_colours(params)[run.regime]


def run_linestyle(run: Run) -> str:
    return ATTENTION_LINESTYLES.get(run.attention, OTHER_ATTENTION_LINESTYLE)


def run_label(run: Run, runs: Sequence[Run]) -> str:
    """``standard · noam`` (or the baseline's name); the run's full name where that would be ambiguous among
    ``runs`` (e.g. several seeds of one cell)."""
    def short(r: Run) -> str:
        return f"{r.baseline} (baseline)" if r.baseline else f"{r.attention} · {r.regime}"

    label = short(run)
    return run.name if sum(short(r) == label for r in runs) > 1 else label


def run_legend_handles(params: Params, runs: Sequence[Run]) -> list[Line2D]:
    """Legend entries that explain the encoding rather than list runs: one per regime (colour), one per
    attention (line style), one per baseline (grey)."""
    colours = regime_colours(params)
    regimes = list(dict.fromkeys(r.regime for r in runs if not r.baseline))
    attentions = list(dict.fromkeys(r.attention for r in runs if not r.baseline))
    handles = [Line2D([], [], color=colours[r], lw=2.5, label=r) for r in regimes]
    handles += [Line2D([], [], color="0.2", lw=1.5, ls=ATTENTION_LINESTYLES.get(a, OTHER_ATTENTION_LINESTYLE),
                        label=f"{a} attention")
                for a in attentions]
    handles += [Line2D([], [], color=BASELINE_COLOUR, lw=2, label=f"{r.baseline} (baseline)")
                for r in runs if r.baseline]
    return handles
