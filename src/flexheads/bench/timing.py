"""Interleaved timing: every candidate measured in the same rounds, so drift (thermal throttling, another process,
a clock change) hits all of them alike, and medians over the rounds.

A candidate is an ordered mapping of *phases* (callables run one after the other for each step, each timed on its
own, e.g. ``{"data": fetch, "step": train_on_fetched}``).  The schedule is ``warmup`` unrecorded rounds, then
``repeats`` recorded rounds; in each round every candidate runs ``steps`` consecutive steps.  Round ``r`` starts
with candidate ``r mod n`` (round-robin), so no candidate always runs first or right after the same neighbour.

    seconds per step of a phase in one repeat = (sum of that phase's durations over the repeat's steps) / steps
    median = the median of those per-repeat values

``sync`` runs after every phase, before the clock is read (``torch.cuda.synchronize`` on CUDA: kernels are
asynchronous, and a phase's time must include its kernels).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Phase = Callable[[], object]
Candidate = Mapping[str, Phase]  # phase name → callable, run in this order each step


@dataclass(frozen=True)
class Timing:
    """Seconds per step of one phase of one candidate: one value per recorded repeat."""

    repeats: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.repeats)

    def to_dict(self) -> dict[str, float | list[float]]:
        return {"median_s": self.median, "repeats_s": list(self.repeats)}


def round_order(names: list[str], round_index: int) -> list[str]:
    """The candidates in round ``round_index``: ``names`` rotated to start at ``round_index mod len(names)``."""
    start = round_index % len(names)
    return names[start:] + names[:start]


def _no_sync() -> None:
    return None


def interleaved(
    candidates: Mapping[str, Candidate],
    *,
    warmup: int,
    repeats: int,
    steps: int,
    sync: Callable[[], object] = _no_sync,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Timing]]:
    """Time every phase of every candidate over interleaved rounds (module docstring).

    Returns:
        candidate → phase → :class:`Timing` (``repeats`` per-step seconds each).
    """
    if repeats < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, steps >= 1 and warmup >= 0 (got {repeats}, {steps}, {warmup})")
    names = list(candidates)
    recorded: dict[str, dict[str, list[float]]] = {name: {phase: [] for phase in candidates[name]} for name in names}
    for round_index in range(warmup + repeats):
        for name in round_order(names, round_index):
            totals = dict.fromkeys(candidates[name], 0.0)
            for _ in range(steps):
                for phase, run in candidates[name].items():
                    sync()
                    start = clock()
                    run()
                    sync()
                    totals[phase] += clock() - start
            if round_index >= warmup:
                for phase, total in totals.items():
                    recorded[name][phase].append(total / steps)
    return {name: {phase: Timing(tuple(values)) for phase, values in phases.items()}
            for name, phases in recorded.items()}
