"""Optimiser factory: the regimes compare Adam (Kingma & Ba 2015) with RAdam (Liu et al. 2020)."""

from __future__ import annotations

from typing import Iterable

import torch


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """``adam`` → ``torch.optim.Adam``; ``radam`` → ``torch.optim.RAdam`` (variance rectification, no warmup).

    ``lr`` is the initial rate; the training loop overwrites each group's ``lr`` from the schedule every step.
    ``fused`` (``train.<task>.fused_optimizer``) asks for the fastest multi-tensor implementation: Adam's fused
    kernel (``fused=True``: one kernel for every parameter's update, CUDA or CPU); RAdam has no fused kernel in
    torch, so it gets ``foreach=True`` (grouped ``torch._foreach_*`` ops; already torch's choice on CUDA when
    nothing is set, so there it changes nothing).  Either may round differently from the default per-parameter
    loop, so CPU results with ``fused`` differ from those without.  False: torch's defaults.
    """
    optimizers = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer '{name}'; expected one of {sorted(optimizers)}")
    speed = ({"fused": True} if name == "adam" else {"foreach": True}) if fused else {}
    return optimizers[name](parameters, lr=lr, betas=betas, weight_decay=weight_decay, **speed)


def radam_rectification(step: int, beta2: float) -> float:
    """RAdam's variance rectification term r_t (Liu et al. 2020, Alg. 2), 0 while rho_t <= 4.

    ``rho_inf = 2/(1-beta2) - 1``; ``rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)``;
    ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``.  It acts as RAdam's
    effective warmup (thesis fig. 3.15); torch's RAdam takes an un-rectified SGD-with-momentum step
    while rho_t <= 5.
    """
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2**step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    if rho_t <= 4.0:
        return 0.0
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
