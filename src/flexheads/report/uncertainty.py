"""Uncertainty of the summary's differences: a paired cluster bootstrap over the test set, and a t-test over seeds.

Every run of a task is scored on one test set, so two runs are compared on the same samples (paired).  Each
task's ``evaluate`` writes ``metrics/<run>/samples.npz``: per test sample the quantities its main metric is
computed from, and ``group``, the resampling unit (frames of one sequence, people of one image, images of one
patient are correlated, so whole groups are drawn: a cluster bootstrap).  The task's ``sample_metric`` turns any
multiset of rows back into its main metric.

* :func:`group_resamples`: ``N_RESAMPLES`` resamples of the groups, drawn with ``default_rng(SEED)``: the same
  draws for every run of the task;
* :func:`bootstrap`: the matrix ``R[run, b]`` of each run's metric on each resample, and its full-set value;
* :func:`difference`: a contrast, ``mean(plus runs) - mean(minus runs)`` averaged over seeds: its value on the
  full test set, its 95% percentile interval over the resamples, and over seeds its standard deviation and the
  paired t-test's p-value.  Significant: the interval excludes 0 and, with several seeds, ``p < SEED_ALPHA`` too:
  the resamples measure the test set's sampling noise only, the seeds the training's, and a difference must stand
  out from both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 1000  # percentile intervals at 95% are stable to ~1% of their width with 1000 resamples
SEED = 0
LEVEL = 0.95
SEED_ALPHA = 0.05  # with several seeds a difference must also pass the paired t-test over seeds at this level

Samples = Mapping[str, np.ndarray]  # samples.npz: column name → (N, ...) array, one row per test sample
SampleMetric = Callable[[Samples], float]  # a task's sample_metric


def take(samples: Samples, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``rows`` (repeats allowed) of every column of ``samples``."""
    return {name: column[rows] for name, column in samples.items()}


def group_resamples(group: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """Row indices of ``n_resamples`` cluster-bootstrap resamples of ``group`` (one id per row).

    Each resample draws ``G`` of the ``G`` distinct groups uniformly with replacement (``default_rng(seed)``) and
    takes every row of each drawn group, once per draw; rows come in their original order.  The draws depend on
    ``seed`` and the number of groups only, so every run of a task (one test set) gets the same resamples.
    """
    _, inverse = np.unique(group, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        copies = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)  # (G,) draws of each group
        yield np.repeat(np.arange(len(inverse)), copies[inverse])


@dataclass(frozen=True)
class Bootstrap:
    """Each run's main metric on the full test set (``point``) and on every resample (``resampled``, ``(B,)``)."""

    point: dict[str, float]
    resampled: dict[str, np.ndarray]


def bootstrap(samples: Mapping[str, Samples], metric: SampleMetric, n_resamples: int = N_RESAMPLES,
              seed: int = SEED) -> Bootstrap:
    """``metric`` of each run's samples (run name → samples, one test set: equal ``group`` columns) on all rows and
    on the rows of each of :func:`group_resamples` (the same resamples for every run: paired)."""
    names = list(samples)
    group = samples[names[0]]["group"]
    for name in names[1:]:
        if not np.array_equal(samples[name]["group"], group):
            raise ValueError(f"samples of {name} and {names[0]} are not one test set (their 'group' columns differ): "
                             "evaluate both on the same prepared data")
    resampled = np.empty((len(names), n_resamples))
    for b, rows in enumerate(group_resamples(group, n_resamples, seed)):
        resampled[:, b] = [metric(take(samples[name], rows)) for name in names]
    return Bootstrap(point={name: float(metric(samples[name])) for name in names},
                     resampled=dict(zip(names, resampled)))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the finite ``values`` (numpy's linear
    interpolation); NaN where none is finite (a metric undefined on every resample)."""
    finite = np.asarray(values, dtype=float)[np.isfinite(values)]
    if not finite.size:
        return math.nan, math.nan
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def excludes_zero(low: float, high: float) -> bool:
    """The significance rule: the interval ``[low, high]`` lies strictly on one side of 0."""
    return bool(low > 0 or high < 0)


@dataclass(frozen=True)
class Difference:
    """A contrast between runs: ``point`` on the full test set (the mean over seeds), its interval ``[low, high]``,
    ``significant`` (the interval excludes 0, and ``p < SEED_ALPHA`` where ``p`` is defined); over more than one
    seed the contrast's ``std`` (ddof 1) and the paired t-test's two-sided ``p`` (NaN with one seed)."""

    point: float
    low: float
    high: float
    significant: bool
    std: float = math.nan
    p: float = math.nan


def difference(boot: Bootstrap, plus: Sequence[Sequence[str]], minus: Sequence[Sequence[str]],
               level: float = LEVEL) -> Difference:
    """The contrast ``c_s = mean_{r in plus[s]} M_r - mean_{r in minus[s]} M_r`` per seed ``s``, averaged over
    seeds: ``point = mean_s c_s`` on the full test set; the interval: the percentile interval of ``mean_s c_s``
    over the resamples (all seeds' runs on the same resample); ``std`` of ``c_s`` and the p-value of
    ``scipy.stats.ttest_rel`` of the seeds' ``plus`` and ``minus`` means (a one-sample t-test of ``c_s``; NaN when
    every ``c_s`` is the same, where t is undefined)."""
    if len(plus) != len(minus) or not plus:
        raise ValueError(f"need one plus and one minus list of runs per seed, got {len(plus)} and {len(minus)}")

    def side(runs_per_seed: Sequence[Sequence[str]], values: Mapping[str, float | np.ndarray]) -> np.ndarray:
        return np.array([np.mean([values[r] for r in runs], axis=0) for runs in runs_per_seed])  # (S,) or (S, B)

    per_seed = side(plus, boot.point) - side(minus, boot.point)  # (S,)
    low, high = percentile_interval((side(plus, boot.resampled) - side(minus, boot.resampled)).mean(axis=0), level)
    std, p = math.nan, math.nan
    if len(per_seed) > 1:
        std = float(np.std(per_seed, ddof=1))
        if np.ptp(per_seed) > 1e-12 * max(1.0, float(np.abs(per_seed).max())):  # no spread: t undefined, p NaN
            from scipy.stats import ttest_rel  # only with seeds: scipy.stats costs ~1 s to import

            p = float(ttest_rel(side(plus, boot.point), side(minus, boot.point)).pvalue)
    point = float(per_seed.mean())
    significant = not math.isnan(point) and excludes_zero(low, high) and (math.isnan(p) or p < SEED_ALPHA)
    return Difference(point, low, high, significant, std, p)
