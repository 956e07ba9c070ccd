"""Shared test settings: one torch thread per test process keeps the suite fast on 2-core CI machines."""

import flexheads  # noqa: F401  (sets the MKL reproducibility switches before torch starts MKL)
import torch

torch.set_num_threads(1)
