"""What the tasks' evaluations share: the fixed samples they look at and the attention record the report draws.

* ``VALIDATION_SAMPLES``: the most samples one validation call scores (the held-out metric of the training curves);
* ``predict_batches``: a model's outputs on a sequence of input batches, in eval mode, without gradients, in full
  precision (float32; never under autocast, whatever the caller's context) on every device (every task's prediction
  loop: evaluation and the validation curves);
* ``evenly_spaced``: fixed rows spread over a split (validation subsets, the report's example samples), the same
  for every run of a task;
* ``attention_record``: the arrays of ``metrics/<run>/attention.npz``: one input's attention probabilities per
  layer and head, with the names of its tokens and the input as a figure shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

VALIDATION_SAMPLES = 512  # large enough for a stable curve, small enough for ~1 s per call on 2 CPU cores

Output = TypeVar("Output")


def first_output(model: nn.Module, inputs: Tensor) -> Any:
    """``model(inputs)[0]``: the prediction of a model whose ``forward`` returns ``(prediction, attention)``."""
    return model(inputs)[0]


def predict_batches(model: nn.Module, batches: Iterable[Tensor], device: torch.device,
                    forward: Callable[[nn.Module, Tensor], Output] = first_output) -> Iterator[Output]:
    """``forward(model, batch)`` of each of ``batches`` moved to ``device``, in order, with ``model`` in eval mode
    on ``device``, without gradients and in full precision: autocast is switched off around the forward, so
    evaluation runs in float32 on CUDA as on CPU even when called inside an autocast region (training's bfloat16
    autocast covers the training step only).  ``model`` is set up on the first batch drawn.
    """
    model.eval().to(device)
    for batch in batches:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            output = forward(model, batch.to(device))
        yield output


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` distinct increasing row indices (int64) spread evenly over ``range(n)``, the first and the
    last row included (rounded ``linspace``: neighbours are at least one row apart, so none repeats)."""
    return np.linspace(0, n - 1, min(n, k)).round().astype(np.int64)


def grid_tokens(rows: int, cols: int) -> list[str]:
    """Names ``r{row}c{col}`` of the tokens of a row-major ``rows × cols`` grid."""
    return [f"r{row}c{col}" for row in range(rows) for col in range(cols)]


@torch.no_grad()
def attention_record(model: nn.Module, inputs: Tensor, device: torch.device, tokens: Sequence[str],
                     grid: tuple[int, int], image: np.ndarray) -> dict[str, np.ndarray] | None:
    """The ``attention.npz`` arrays of one input, or None for a model without attention (its ``forward(x,
    need_weights=True)`` returns no weights, e.g. the MLP baseline).

    Args:
        inputs: a batch of one input, as the model's ``forward`` takes it.
        tokens: the names of the encoder's ``N`` tokens, in order.
        grid: ``(rows, cols)`` of the patch or token grid; ``(0, 0)`` when the tokens form no grid.
        image: the input as a figure shows it (stored as given): an image ``(H, W)`` or ``(H, W, 3)`` uint8, or,
            for tokens without a grid, one point per token ``(N, 2)`` in image pixels (y down).
    Returns:
        ``weights`` float32 ``(n_layers, n_heads, N, N)``: the softmax probabilities (each row sums to 1) of the
        model in eval mode, computed in float32 (never under autocast); ``tokens`` str ``(N,)``; ``grid`` int64
        ``(2,)``; ``image``.
    """
    model.eval().to(device)
    with torch.autocast(device.type, enabled=False):
        _, weights = model(inputs.to(device), need_weights=True)
    if weights is None:
        return None
    stacked = torch.stack([layer[0] for layer in weights]).float().cpu().numpy()  # (n_layers, h, N, N)
    if stacked.shape[-1] != len(tokens):
        raise ValueError(f"the model attends over {stacked.shape[-1]} tokens, but {len(tokens)} names were given")
    return {"weights": stacked, "tokens": np.asarray(tokens, dtype=str), "grid": np.asarray(grid, dtype=np.int64),
            "image": image}
