"""The thesis's method figures, drawn from the library's own functions (no run outputs needed).

* ``positional_encoding`` (fig. 3.13): :func:`flexheads.nn.positional.sinusoidal_encoding` as a heat map;
* ``noam_schedule`` (fig. 3.14): :func:`flexheads.optim.schedules.noam` for three (d_m, warmup) settings, as in
  Vaswani et al. 2017 / the Annotated Transformer;
* ``warmup_comparison`` (fig. 3.15): RAdam's rectification r_t, its effective warmup (Liu et al. 2020), against
  Ma & Yarats' (2021) untuned linear and exponential warmup of Adam, beta2 = 0.999.

Each curve is computed by a ``*_curves`` function, so tests can compare what is drawn with the library.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from flexheads.nn.positional import sinusoidal_encoding
from flexheads.optim.optimizers import radam_rectification
from flexheads.optim.schedules import noam, untuned_exponential_warmup, untuned_linear_warmup

PE_POSITIONS, PE_D_MODEL = 2000, 500
NOAM_SETTINGS = ((512, 4000), (512, 8000), (256, 4000))  # (d_m, warmup); the first is the thesis's
NOAM_STEPS = 20_000
WARMUP_STEPS = 18_000
WARMUP_BETA2 = 0.999


def positional_encoding_figure() -> plt.Figure:
    table = sinusoidal_encoding(PE_POSITIONS, PE_D_MODEL).numpy()  # (positions, d_model)
    figure, ax = plt.subplots(figsize=(7.0, 5.0), layout="constrained")
    image = ax.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                      origin="upper", extent=(-0.5, PE_D_MODEL - 0.5, PE_POSITIONS - 0.5, -0.5))
    figure.colorbar(image, ax=ax, label="PE(pos, i)")
    ax.set_xlabel("embedding dimension i")
    ax.set_ylabel("position pos (token index)")
    ax.grid(False)
    ax.set_title(f"Sinusoidal positional encoding: {PE_POSITIONS} positions, $d_m$ = {PE_D_MODEL}\n"
                 r"PE(pos, 2i) = sin(pos / $10000^{2i/d_m}$), PE(pos, 2i+1) = cos(pos / $10000^{2i/d_m}$)")
    return figure


def noam_curves(steps: int = NOAM_STEPS) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """``(t = 1..steps, {(d_m, warmup): noam rate at each t})``."""
    t = np.arange(1, steps + 1)
    return t, {(d, w): np.array([noam(s, d, w) for s in t]) for d, w in NOAM_SETTINGS}


def noam_schedule_figure() -> plt.Figure:
    t, curves = noam_curves()
    figure, ax = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    d_model, warmup = NOAM_SETTINGS[0]
    for i, ((d, w), rate) in enumerate(curves.items()):
        thesis = i == 0
        note = " (thesis)" if thesis else f" (= thesis curve after step {w})" if d == d_model and w > warmup else ""
        ax.plot(t, rate, lw=2.4 if thesis else 1.4, ls="-" if thesis else "--", zorder=3 if thesis else 2,
                label=f"$d_m$ = {d}, warmup = {w}{note}")
    peak = (d_model * warmup) ** -0.5
    ax.axvline(warmup, color="0.4", lw=0.8, ls=":")
    ax.annotate(rf"peak $(d_m \cdot warmup)^{{-1/2}}$ = {peak:.2e} at step {warmup}", xy=(warmup, peak),
                xytext=(1.5 * warmup, 0.15 * peak), arrowprops={"arrowstyle": "->", "color": "0.3"}, fontsize=9)
    ax.set_xlim(0, t[-1])
    ax.set_ylim(0, max(r.max() for r in curves.values()) * 1.25)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, -3))
    ax.set_xlabel("training step t (optimiser updates)")
    ax.set_ylabel("learning rate")
    ax.set_title(r"Noam schedule: lr = $d_m^{-1/2}\,\min(t^{-1/2},\ t \cdot warmup^{-3/2})$")
    ax.legend(loc="upper right")
    return figure


def warmup_curves(steps: int = WARMUP_STEPS, beta2: float = WARMUP_BETA2) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(t = 1..steps, {name: lr multiplier at each t})``; RAdam's r_t is NaN while rho_t <= 4 (undefined: RAdam
    takes un-adapted momentum steps there)."""
    t = np.arange(1, steps + 1)
    radam = np.array([radam_rectification(s, beta2) for s in t])
    return t, {
        "radam": np.where(radam > 0, radam, np.nan),
        "untuned_linear": np.array([untuned_linear_warmup(s, beta2) for s in t]),
        "untuned_exponential": np.array([untuned_exponential_warmup(s, beta2) for s in t]),
    }


def warmup_comparison_figure() -> plt.Figure:
    t, curves = warmup_curves()
    undefined = int(np.isnan(curves["radam"]).sum())  # the first steps, where rho_t <= 4
    tau = 2 / (1 - WARMUP_BETA2)
    labels = {
        "radam": f"RAdam rectification $r_t$ (undefined for t ≤ {undefined}: un-adapted momentum steps, not drawn)",
        "untuned_linear": rf"Adam + untuned linear warmup min(1, t / {tau:.0f}), $\tau = 2/(1-\beta_2)$",
        "untuned_exponential": r"Adam + untuned exponential warmup $1 - e^{-(1-\beta_2)\,t}$",
    }
    figure, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for (name, values), colour in zip(curves.items(), ("C3", "C0", "C2")):
        ax.plot(t, values, lw=2, color=colour, label=labels[name])
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlim(0, t[-1])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("training iteration t")
    ax.set_ylabel("learning-rate multiplier")
    ax.set_title(rf"Effective warmup of RAdam vs untuned warmup of Adam ($\beta_2$ = {WARMUP_BETA2})")
    ax.legend(loc="lower right")
    return figure
