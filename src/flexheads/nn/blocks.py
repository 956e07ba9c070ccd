"""Transformer encoder layers with visible norm placement, and the one config every model's encoder is built from.

Every sub-layer ``f`` (attention or MLP) is wrapped as

    x = post_norm(x + dropout(f(pre_norm(x))))

where the pair ``(pre_norm, post_norm)`` is ``(Identity, LayerNorm)`` for Post-LN (Vaswani et al. 2017),
``(LayerNorm, Identity)`` for Pre-LN (Xiong et al. 2020) and ``(Identity, Identity)`` for no-LN
(T-Fixup, Huang et al. 2020). ``forward`` therefore has no branches on the norm type.
The head width ``d_head`` is passed through to every attention module (None = ``d_model // n_heads``).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .attention import MultiHeadAttention

__all__ = ["NORMS", "ACTIVATIONS", "INITS", "EncoderConfig", "Mlp", "EncoderLayer", "TransformerEncoder"]

NORMS = ("post", "pre", "none")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
INITS = ("xavier", "tfixup")


@dataclass(frozen=True)
class EncoderConfig:
    """The transformer encoder of every flexheads model: its size, its heads, where LayerNorm sits and how its
    weights start.  Built from params.yaml in one place (``flexheads.config.RunConfig.encoder``); no defaults,
    so a saved model always states every value it was built with.
    """

    d_model: int  # residual width
    n_heads: int
    d_head: int | None  # head width; None: standard heads, d_model // n_heads wide
    n_layers: int
    d_ff: int  # MLP hidden width
    dropout: float
    activation: str  # relu | gelu
    norm: str  # post | pre | none
    init: str  # xavier | tfixup (flexheads.nn.init_weights)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def norm_pair(norm: str, d_model: int) -> tuple[nn.Module, nn.Module]:
    """``(pre_norm, post_norm)`` around one residual sub-layer for ``norm`` in :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    pre = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
    post = nn.LayerNorm(d_model) if norm == "post" else nn.Identity()
    return pre, post


class Mlp(nn.Module):
    """Position-wise feed-forward block: ``fc2(drop(act(fc1(x))))``, ``d_model -> d_ff -> d_model``."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Self-attention + MLP, each a residual sub-layer with ``norm`` placement ('post' | 'pre' | 'none').

    Args:
        d_model: residual width. n_heads: heads. d_head: head width (None = ``d_model // n_heads``).
        d_ff: MLP hidden width (None = ``4 * d_model``). dropout: on attention weights, MLP hidden
        and both residual branches. activation: 'relu' | 'gelu'. norm: 'post' | 'pre' | 'none'.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int | None = None,
        d_ff: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        norm: str = "post",
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, d_head, dropout=dropout)
        self.pre_norm1, self.post_norm1 = norm_pair(norm, d_model)
        self.drop1 = nn.Dropout(dropout)
        self.mlp = Mlp(d_model, 4 * d_model if d_ff is None else d_ff, activation, dropout)
        self.pre_norm2, self.post_norm2 = norm_pair(norm, d_model)
        self.drop2 = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, N, d_model)`` -> ``(x, self-attention weights (B, h, N, N) or None)``."""
        h, weights = self.self_attn(
            self.pre_norm1(x),
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=is_causal,
            need_weights=need_weights,
        )
        x = self.post_norm1(x + self.drop1(h))
        x = self.post_norm2(x + self.drop2(self.mlp(self.pre_norm2(x))))
        return x, weights


def make_final_norm(norm: str, d_model: int) -> nn.Module:
    """LayerNorm after the last layer for Pre-LN (its residual stream is otherwise never normalised)."""
    return nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()


class TransformerEncoder(nn.Module):
    """A stack of ``n_layers`` :class:`EncoderLayer` s and ``final_norm``; arguments as :class:`EncoderLayer`."""

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_head: int | None = None,
        d_ff: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        norm: str = "post",
    ) -> None:
        super().__init__()
        if n_layers <= 0:
            raise ValueError(f"n_layers must be positive, got {n_layers}")
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_head, d_ff, dropout, activation, norm) for _ in range(n_layers)
        )
        self.final_norm = make_final_norm(norm, d_model)

    @classmethod
    def from_config(cls, config: EncoderConfig) -> TransformerEncoder:
        """The encoder ``config`` describes; the model applies its ``init`` (:func:`flexheads.nn.init_weights`)."""
        return cls(config.n_layers, config.d_model, config.n_heads, config.d_head, config.d_ff, config.dropout,
                   config.activation, config.norm)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor] | None]:
        """``x (B, N, d_model)`` -> ``(x, per-layer self-attention weights [(B, h, N, N)] or None)``."""
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=need_weights)
            all_weights.append(weights)
        return self.final_norm(x), (all_weights if need_weights else None)
