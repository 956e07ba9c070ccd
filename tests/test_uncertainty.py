"""The paired cluster bootstrap and the t-test over seeds on cases whose every resample can be enumerated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flexheads.report.uncertainty import (
    Bootstrap, bootstrap, difference, excludes_zero, group_resamples, percentile_interval,
)

# two groups: group 0 holds rows 0 and 1, group 1 holds row 2.  A resample draws 2 groups: {0, 0}, {0, 1} or
# {1, 1}, each of the three with probability >= 1/4, so 1000 resamples hold all three (and the 2.5% and 97.5%
# percentiles fall inside the blocks of the two extreme resamples).
GROUP = np.array([0, 0, 1])


def mean_value(samples) -> float:
    return float(np.mean(samples["value"]))


def runs(**values: list[float]) -> dict[str, dict[str, np.ndarray]]:
    return {name: {"value": np.array(v, dtype=float), "group": GROUP} for name, v in values.items()}


def test_resamples_draw_whole_groups_with_replacement_the_same_for_every_call():
    group = np.array([7, 7, 3, 9, 9, 9])
    first, again = list(group_resamples(group, 50)), list(group_resamples(group, 50))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # seeded: the same draws for every run
    for rows in first:
        counts = np.bincount(group[rows], minlength=10)
        copies = {g: counts[g] / (group == g).sum() for g in (7, 3, 9)}
        assert all(c == int(c) for c in copies.values()) and sum(copies.values()) == 3  # 3 whole groups


def test_interval_spans_the_extreme_resamples():
    # values 1, 3 | 8: {0, 0} → mean 2, {0, 1} → 12 / 3 = 4, {1, 1} → 8
    boot = bootstrap(runs(a=[1, 3, 8]), mean_value)
    assert boot.point == {"a": 4.0}
    assert set(np.unique(boot.resampled["a"])) == {2.0, 4.0, 8.0}
    assert percentile_interval(boot.resampled["a"]) == (2.0, 8.0)


def test_paired_differences_use_the_same_resamples_for_every_run():
    # b = a + 1 on every row: the difference is 1 on every resample, so the interval is [1, 1]; drawn independently
    # per run it would spread over [2 - 8, 8 - 2] + 1
    boot = bootstrap(runs(a=[1, 3, 8], b=[2, 4, 9], c=[2, 4, 8]), mean_value)
    b = difference(boot, [["b"]], [["a"]])
    assert (b.point, b.low, b.high, b.significant) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0),
                                                       True)
    # c = a + 1 in group 0 only: {0, 0} → 1, {0, 1} → 2 / 3, {1, 1} → 0: interval [0, 1] holds 0
    c = difference(boot, [["c"]], [["a"]])
    assert (c.point, c.low, c.high, c.significant) == (pytest.approx(2 / 3), 0.0, 1.0, False)
    assert math.isnan(c.std) and math.isnan(c.p)  # one seed: no spread over seeds, no t-test


def test_significant_only_when_the_interval_excludes_zero():
    assert excludes_zero(0.1, 2.0) and excludes_zero(-2.0, -0.1)
    assert not excludes_zero(0.0, 1.0) and not excludes_zero(-1.0, 0.0) and not excludes_zero(-1.0, 1.0)
    assert not excludes_zero(math.nan, math.nan)


def test_seeds_average_the_contrast_and_t_test_it():
    # per seed s the difference b_s - a_s is 1, 2, 3 on every resample: mean 2, std 1, and
    # t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 degrees of freedom: p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14)
    offsets = [1.0, 2.0, 3.0]
    values = {f"a{s}": [1, 3, 8] for s in range(3)} | {f"b{s}": [1 + o, 3 + o, 8 + o] for s, o in enumerate(offsets)}
    boot = bootstrap(runs(**values), mean_value)
    d = difference(boot, [["b0"], ["b1"], ["b2"]], [["a0"], ["a1"], ["a2"]])
    # the interval [2, 2] excludes 0, but over 3 seeds p = 0.074: the seeds do not agree enough, not significant
    assert (d.point, d.low, d.high, d.significant) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0),
                                                       False)
    assert d.std == pytest.approx(1.0) and d.p == pytest.approx(1 - math.sqrt(12 / 14))
    same = difference(boot, [["b0"], ["b0"]], [["a0"], ["a1"]])  # 1 on both seeds: no spread, t undefined
    assert same.std == 0.0 and math.isnan(same.p) and same.significant


def test_with_seeds_significant_needs_the_t_test_too():
    # per seed differences 1.9, 2.0, 2.1: mean 2, std 0.1, t = 2 / (0.1 / sqrt 3) = 34.6 on 2 degrees of freedom,
    # p = 1 - t / sqrt(2 + t^2) = 8.3e-4 < 0.05; the interval [2, 2] excludes 0: significant
    values = {f"a{s}": [1, 3, 8] for s in range(3)} | {f"b{s}": [1 + o, 3 + o, 8 + o]
                                                        for s, o in enumerate([1.9, 2.0, 2.1])}
    d = difference(bootstrap(runs(**values), mean_value), [["b0"], ["b1"], ["b2"]], [["a0"], ["a1"], ["a2"]])
    t = 2 / (0.1 / math.sqrt(3))
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t**2)) and d.p < 0.05 and d.significant


def test_averaged_sides_and_undefined_resamples():
    boot = Bootstrap(point={"a": 1.0, "b": 3.0, "c": 0.0},
                     resampled={"a": np.array([1.0, 2.0, np.nan]), "b": np.array([3.0, 4.0, 5.0]),
                                "c": np.zeros(3)})
    d = difference(boot, [["a", "b"]], [["c"]])  # mean of a and b minus c; the NaN resample is left out
    assert (d.point, d.low, d.high) == (2.0, pytest.approx(2.0 + 0.025), pytest.approx(3.0 - 0.025))
    assert percentile_interval(np.array([np.nan])) == (pytest.approx(math.nan, nan_ok=True),) * 2


def test_runs_on_different_test_sets_are_refused():
    samples = runs(a=[1, 3, 8], b=[1, 3, 8])
    samples["b"]["group"] = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="not one test set"):
        bootstrap(samples, mean_value)
