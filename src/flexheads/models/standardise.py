"""Per-joint standardisation of pose inputs and outputs, held as buffers so it is saved with the weights.

``x' = (x - mean) / std`` on the way in and ``y = y' * std + mean`` on the way out, with the training split's
per-joint means and standard deviations (Martinez et al. 2017 standardise both sides the same way).  Outputs are
root-relative poses: their root, joint 0 (Human3.6M's pelvis), is (0, 0, 0) by construction, never predicted
(its std is 0, so a standardised root would need a std floor, and its loss weight would shrink about tenfold).
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
        """Use these statistics ``(J, dims)``; stds below 1e-6 (e.g. the root of root-relative poses) count as 1,
        so that ``forward`` never divides by 0."""
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., J, dims)`` → ``(x - mean) / std``."""
        return (x - self.mean) / self.std

    def inverse_with_root(self, non_root: Tensor) -> Tensor:
        """``(B, J - 1, dims)`` standardised joints ``1..J-1`` → ``(B, J, dims)`` root-relative pose: those joints
        ``y' * std + mean``, the root (joint 0) exactly 0 whatever the statistics."""
        pose = non_root * self.std[1:] + self.mean[1:]
        return torch.cat([pose.new_zeros(len(pose), 1, pose.shape[-1]), pose], dim=1)
