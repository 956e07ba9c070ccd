"""Per-joint standardisation of pose inputs and outputs, held as buffers so it is saved with the weights.

``x' = (x - mean) / std`` on the way in and ``y = y' * std + mean`` on the way out, with the training split's
per-joint means and standard deviations (Martinez et al. 2017 standardise both sides the same way).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Standardiser(nn.Module):
    def __init__(self, n_joints: int, dims: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_joints, dims))
        self.register_buffer("std", torch.ones(n_joints, dims))

    @torch.no_grad()
    def set_(self, mean: Tensor, std: Tensor) -> None:
        """Use these statistics ``(J, dims)``; stds below 1e-6 (e.g. the root of root-relative poses) count as 1."""
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean
