"""Learning-rate schedules and optimisers: each formula at hand-computed steps, warmups increase, and the
RAdam rectification agrees with both its closed form and torch's RAdam."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flexheads.config import load_params
from flexheads.optim.optimizers import build_optimizer, radam_rectification
from flexheads.optim.schedules import (
    constant,
    exponential_warmup,
    linear_warmup,
    lr_at,
    noam,
    untuned_exponential_warmup,
    untuned_linear_warmup,
)

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


# --- Noam ---------------------------------------------------------------------------------------------


def test_noam_first_step() -> None:
    assert noam(1, 512, 4000) == pytest.approx(512**-0.5 * 4000**-1.5, rel=1e-12)


def test_noam_peak_value_and_half_at_four_times_warmup() -> None:
    peak = (512 * 4000) ** -0.5
    assert noam(4000, 512, 4000) == pytest.approx(peak, rel=1e-12)
    assert noam(16000, 512, 4000) == pytest.approx(peak / 2, rel=1e-12)  # t^-0.5: 4x the steps, half the rate


def test_noam_peaks_at_warmup() -> None:
    rates = [noam(t, 64, 200) for t in range(1, 1001)]
    assert max(range(len(rates)), key=rates.__getitem__) + 1 == 200


def test_noam_linear_then_inverse_sqrt() -> None:
    d_model, warmup = 64, 100
    for t in range(1, warmup + 1):  # rate / t constant while warming up
        assert noam(t, d_model, warmup) / t == pytest.approx(d_model**-0.5 * warmup**-1.5, rel=1e-12)
    for t in range(warmup, 5 * warmup):  # rate * sqrt(t) constant afterwards
        assert noam(t, d_model, warmup) * math.sqrt(t) == pytest.approx(d_model**-0.5, rel=1e-12)


def test_noam_step_zero_is_step_one() -> None:
    assert noam(0, 64, 10) == noam(1, 64, 10)


# --- warmups ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (11, 1.0), (1000, 1.0)])
def test_linear_warmup(step: int, expected: float) -> None:
    assert linear_warmup(step, 10) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("step", [1, 5, 10, 30, 100])
def test_exponential_warmup(step: int) -> None:
    value = exponential_warmup(step, 10)
    assert value == pytest.approx(1 - math.exp(-step / 10), rel=1e-12)
    assert 0 < value < 1


def test_exponential_warmup_at_tau() -> None:
    assert exponential_warmup(10, 10) == pytest.approx(1 - 1 / math.e, rel=1e-12)


def test_untuned_linear_tau_is_two_over_one_minus_beta2() -> None:
    # beta2 = 0.999 -> tau = 2000
    assert untuned_linear_warmup(1, 0.999) == pytest.approx(1 / 2000, rel=1e-9)
    assert untuned_linear_warmup(1000, 0.999) == pytest.approx(0.5, rel=1e-9)
    assert untuned_linear_warmup(1999, 0.999) < 1.0
    assert untuned_linear_warmup(2000, 0.999) == 1.0
    assert untuned_linear_warmup(5000, 0.999) == 1.0
    # beta2 = 0.99 (the repo's regimes) -> tau = 200
    assert untuned_linear_warmup(50, 0.99) == pytest.approx(0.25, rel=1e-9)
    assert untuned_linear_warmup(200, 0.99) == 1.0


@pytest.mark.parametrize(("step", "beta2"), [(1, 0.999), (1000, 0.999), (3000, 0.999), (100, 0.99), (7, 0.9)])
def test_untuned_exponential(step: int, beta2: float) -> None:
    assert untuned_exponential_warmup(step, beta2) == pytest.approx(1 - math.exp(-(1 - beta2) * step), rel=1e-9)


def test_untuned_exponential_at_one_over_one_minus_beta2() -> None:
    assert untuned_exponential_warmup(1000, 0.999) == pytest.approx(1 - math.exp(-1), rel=1e-9)


WARMUPS = {
    "linear": (lambda t: linear_warmup(t, 50), 50),
    "exponential": (lambda t: exponential_warmup(t, 50), 50),
    "untuned_linear": (lambda t: untuned_linear_warmup(t, 0.99), 200),
    "untuned_exponential": (lambda t: untuned_exponential_warmup(t, 0.99), 100),
    "noam": (lambda t: noam(t, 64, 50), 50),
}


@pytest.mark.parametrize("name", list(WARMUPS))
def test_warmup_increases(name: str) -> None:
    schedule, tau = WARMUPS[name]
    values = [schedule(t) for t in range(1, tau + 1)]
    assert all(a < b for a, b in zip(values, values[1:])), f"{name} is not strictly increasing over 1..{tau}"
    assert all(0 < v <= 1 for v in values)


@pytest.mark.parametrize("name", ["linear", "exponential", "untuned_linear", "untuned_exponential"])
def test_warmup_multipliers_never_exceed_one(name: str) -> None:
    schedule, tau = WARMUPS[name]
    values = [schedule(t) for t in range(1, 20 * tau)]
    assert all(a <= b <= 1.0 for a, b in zip(values, values[1:]))


def test_constant() -> None:
    assert [constant(t) for t in (1, 2, 10**6)] == [1.0, 1.0, 1.0]


# --- lr_at --------------------------------------------------------------------------------------------

LR, WARMUP, BETA2, D_MODEL = 2e-3, 10, 0.99, 64


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 1, 2e-3),
        ("constant", 777, 2e-3),
        ("noam", 5, 2e-3 * (1 / 8) * 5 * 10**-1.5),  # d_model^-0.5 = 1/8, warming up
        ("noam", 10, 2e-3 * (1 / 8) * 10**-0.5),  # peak
        ("noam", 40, 2e-3 * (1 / 8) / math.sqrt(40)),  # decaying
        ("linear", 5, 1e-3),
        ("linear", 10, 2e-3),
        ("linear", 20, 2e-3),
        ("exponential", 10, 2e-3 * (1 - math.exp(-1))),
        ("untuned_linear", 100, 1e-3),  # tau = 2 / (1 - 0.99) = 200
        ("untuned_linear", 200, 2e-3),
        ("untuned_exponential", 100, 2e-3 * (1 - math.exp(-1))),  # (1 - 0.99) * 100 = 1
    ],
)
def test_lr_at(schedule: str, step: int, expected: float) -> None:
    lr_of_step = lr_at(schedule, lr=LR, warmup=WARMUP, beta2=BETA2, d_model=D_MODEL)
    assert lr_of_step(step) == pytest.approx(expected, rel=1e-9)


def test_lr_at_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'cosine'") as err:
        lr_at("cosine", lr=LR, warmup=WARMUP, beta2=BETA2, d_model=D_MODEL)
    assert "untuned_exponential" in str(err.value)


def test_every_repo_regime_has_a_positive_finite_rate() -> None:
    params = load_params(PARAMS_YAML)
    for name, regime in params.regimes.items():
        lr_of_step = lr_at(regime.schedule, lr=regime.lr, warmup=regime.warmup, beta2=regime.betas[1],
                           d_model=params.model.pose3d.d_model)
        rates = [lr_of_step(t) for t in range(1, params.train.pose3d.steps + 1)]
        assert all(0 < r < math.inf for r in rates), name
        assert max(rates) <= regime.lr * (1 + 1e-12) or regime.schedule == "noam", name


# --- optimisers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("radam", torch.optim.RAdam)])
def test_build_optimizer(name: str, cls: type) -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = build_optimizer(params, name, lr=3e-4, betas=(0.9, 0.98), weight_decay=0.01)
    assert type(optimizer) is cls
    (group,) = optimizer.param_groups
    assert group["betas"] == (0.9, 0.98)
    assert group["lr"] == 3e-4
    assert group["weight_decay"] == 0.01
    assert group["params"][0] is params[0]


def test_build_optimizer_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'.*'adam', 'radam'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", lr=1e-3, betas=(0.9, 0.999))


@pytest.mark.parametrize("beta2", [0.9, 0.99, 0.999])
def test_radam_rectification_is_zero_for_the_first_steps(beta2: float) -> None:
    # rho_1 = 1 for every beta2, and rho_t <= 4 up to t = 4
    assert [radam_rectification(t, beta2) for t in range(1, 5)] == [0.0, 0.0, 0.0, 0.0]
    assert radam_rectification(5, beta2) > 0


def test_radam_rectification_hand_checked() -> None:
    # beta2 = 0.9, t = 10: rho_inf = 19, beta2^10 = 0.3486784401,
    # rho_10 = 19 - 20 * 0.3486784401 / 0.6513215599 = 8.2932013442,
    # r = sqrt(4.2932013442 * 6.2932013442 * 19 / (15 * 17 * 8.2932013442)) = 0.4926880710
    assert radam_rectification(10, 0.9) == pytest.approx(0.4926880710, rel=1e-9)


@pytest.mark.parametrize("beta2", [0.9, 0.999])
def test_radam_rectification_increases_towards_one(beta2: float) -> None:
    values = [radam_rectification(t, beta2) for t in range(5, 20_001)]
    assert all(a < b for a, b in zip(values[:100], values[1:100]))  # strictly while far from saturation
    assert all(a <= b for a, b in zip(values, values[1:]))  # float rounding makes it flat near 1
    assert all(0 < v <= 1 for v in values)
    assert values[-1] == pytest.approx(1.0, abs=1e-3)


def test_radam_rectification_matches_torch_radam() -> None:
    """With a constant gradient of 1, RAdam's step is ``lr * r_t`` once torch rectifies (rho_t > 5)."""
    beta2, lr = 0.9, 0.1
    p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    optimizer = torch.optim.RAdam([p], lr=lr, betas=(0.9, beta2), eps=1e-12)
    checked = 0
    for t in range(1, 41):
        before = p.item()
        p.grad = torch.ones((), dtype=torch.float64)
        optimizer.step()
        step_size = before - p.item()
        if radam_rectification(t, beta2) > 0.26:  # rho_t > 5 from t = 6 (r_6 = 0.2552 is still un-rectified)
            assert step_size == pytest.approx(lr * radam_rectification(t, beta2), rel=1e-9), t
            checked += 1
    assert checked == 34
