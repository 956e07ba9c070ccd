"""Learning-rate schedules as pure functions of the optimiser step (the training loop owns the counter).

``step`` counts from 1 (the first update).  Every function except ``noam`` returns a *multiplier* of the
base learning rate; ``noam`` returns the rate itself.  ``lr_multiplier`` maps a params.yaml regime to one
of them.
"""

from __future__ import annotations

import math
from typing import Callable


def noam(step: float, d_model: int, warmup: float) -> float:
    """Noam rate (Vaswani et al. 2017; thesis eq. 3.28): ``d_m^-0.5 * min(t^-0.5, t * warmup^-1.5)``.

    Rises linearly for ``warmup`` steps to ``(d_m * warmup)^-0.5``, then decays as ``t^-0.5``.
    """
    step = max(step, 1)
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def linear_warmup(step: float, tau: float) -> float:
    """Linear warmup ``min(1, t / tau)``."""
    return min(1.0, step / tau)


def exponential_warmup(step: float, tau: float) -> float:
    """Exponential warmup ``1 - exp(-t / tau)``."""
    return 1.0 - math.exp(-step / tau)


def untuned_linear_warmup(step: float, beta2: float) -> float:
    """Ma & Yarats (2021) untuned linear warmup: ``min(1, t / tau)`` with ``tau = 2 / (1 - beta2)``."""
    return linear_warmup(step, 2.0 / (1.0 - beta2))


def untuned_exponential_warmup(step: float, beta2: float) -> float:
    """Ma & Yarats (2021) untuned exponential warmup: ``1 - exp(-(1 - beta2) * t)``."""
    return exponential_warmup(step, 1.0 / (1.0 - beta2))


def constant(step: float) -> float:
    """No schedule: the base rate at every step."""
    return 1.0


def lr_at(schedule: str, *, lr: float, warmup: int, beta2: float, d_model: int) -> Callable[[int], float]:
    """The learning rate as a function of the step for a params.yaml regime.

    ``noam`` scales the Noam rate by ``lr``; every other schedule multiplies ``lr``.
    """
    multipliers: dict[str, Callable[[int], float]] = {
        "constant": constant,
        "noam": lambda t: noam(t, d_model, warmup),
        "linear": lambda t: linear_warmup(t, warmup),
        "exponential": lambda t: exponential_warmup(t, warmup),
        "untuned_linear": lambda t: untuned_linear_warmup(t, beta2),
        "untuned_exponential": lambda t: untuned_exponential_warmup(t, beta2),
    }
    if schedule not in multipliers:
        raise ValueError(f"unknown schedule '{schedule}'; expected one of {sorted(multipliers)}")
    multiplier = multipliers[schedule]
    return lambda step: lr * multiplier(step)
