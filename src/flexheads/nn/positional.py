"""Positional encodings of a token sequence ``(B, N, d_model)``: the fixed sinusoidal table (the 2D pose model
builds its grid code from it) and a learned table added to the tokens."""
import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_encoding", "LearnedPositionalEncoding"]


def sinusoidal_encoding(n_positions: int, d_model: int) -> Tensor:
    """Sinusoidal table (Vaswani et al. 2017; thesis eq. 3.27), shape ``(n_positions, d_model)``.

        PE(pos, 2i)     = sin(pos / 10000^(2i / d_model))
        PE(pos, 2i + 1) = cos(pos / 10000^(2i / d_model))

    For odd ``d_model`` the last column is a sine without its cosine partner.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (n_positions, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d_model / 2),)
    angle = pos / 10000 ** (two_i / d_model)  # (n_positions, ceil(d_model / 2))
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def add_positions(x: Tensor, table: Tensor) -> Tensor:
    """``x (B, N, d) + table[:N]``; raises if the sequence is longer than the table."""
    n, max_len = x.shape[1], table.shape[0]
    if n > max_len:
        raise ValueError(f"sequence length {n} exceeds the positional table length max_len={max_len}")
    return x + table[:n].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Adds a learned table ``weight (max_len, d_model)``.

    The table starts ``trunc_normal_(std=0.02)`` (timm's ViT), so a bare module is usable; every flexheads model
    then redraws it with its init scheme (:func:`flexheads.nn.init_weights`: ``N(0, 0.02^2)`` under Xavier,
    ``N(0, 1/d_model)``, unscaled, under T-Fixup, as the official code leaves learned positions).
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return add_positions(x, self.weight)
