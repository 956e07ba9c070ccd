"""Multi-head attention with a free per-head width (flexible heads).

Standard attention ties the head width to the model width, ``d_head = d_model / n_heads``.
A flexible head chooses ``d_head`` freely: Q, K, V project ``d_model -> n_heads * d_head``
and the output projection maps ``n_heads * d_head -> d_model`` back, so the residual stream
keeps its width while the attention capacity is set independently.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + M) V            (per head)

Mask conventions follow ``torch.nn.MultiheadAttention`` (batch first).
"""
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "attention_flops", "merge_masks", "use_fused_attn"]


def attention_flops(n_tokens: int, d_model: int, inner: int) -> int:
    """Forward FLOPs of one self-attention layer for one sample of ``N = n_tokens`` tokens, width ``d = d_model``
    and inner width ``I = n_heads * d_head``: ``8 N d I + 4 N² I`` (the q/k/v/out projections ``4 × 2 N d I``,
    ``Q K^T`` and ``A V`` ``2 × 2 N² I``; a multiply-add counts 2).  It depends on the heads through ``I`` alone."""
    return 8 * n_tokens * d_model * inner + 4 * n_tokens**2 * inner


def use_fused_attn() -> bool:
    """Whether new attention modules take the fused SDPA path (env ``FLEXHEADS_FUSED_ATTN=0`` turns it off)."""
    return os.environ.get("FLEXHEADS_FUSED_ATTN", "1") != "0"


def merge_masks(
    query_len: int,
    key_len: int,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    is_causal: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor | None, Tensor | None]:
    """Fold the user masks into one additive SDPA mask.

    Args:
        query_len: N.
        key_len: S.
        key_padding_mask: bool ``(B, S)``, True = ignore that key.
        attn_mask: bool ``(N, S)`` with True = not allowed, or float ``(N, S)`` added to the logits
            (``-inf`` entries count as not allowed); anything broadcastable to ``(B, h, N, S)`` works.
        is_causal: block key ``j > i`` for query ``i`` (top-left aligned, as SDPA's ``is_causal``).
        dtype, device: of the returned mask (the query's).

    Returns:
        ``(mask, empty_rows)``, both None when nothing is masked. ``mask``: float, broadcastable to
        ``(B, h, N, S)``, the bias (or 0) where allowed and ``-inf`` where blocked. ``empty_rows``: bool,
        broadcastable to ``(B, h, N, 1)``, True for queries with no allowed key. Empty rows are left
        unmasked in ``mask`` so no softmax sees an all ``-inf`` row (NaN forward and backward, and
        backend-dependent); the caller zeroes their output instead.
    """
    blocked = None  # bool, True = not allowed
    bias = None
    if key_padding_mask is not None:
        blocked = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        blocked = _union(blocked, attn_mask)
    elif attn_mask is not None:
        bias = attn_mask.to(dtype)
        blocked = _union(blocked, torch.isneginf(bias))
    if is_causal:
        blocked = _union(blocked, torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(1))  # (N, S)
    if blocked is None:
        return bias, None
    empty_rows = blocked.all(dim=-1, keepdim=True)
    bias = torch.zeros((), dtype=dtype, device=device) if bias is None else bias
    mask = torch.where(blocked, float("-inf"), bias)
    mask = torch.where(empty_rows, 0.0, mask)
    return mask, empty_rows


def _union(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a | b


class MultiHeadAttention(nn.Module):
    """Multi-head attention; ``d_head=None`` is standard, any positive ``d_head`` a flexible head.

    Parameters (``bias=True``, inner = n_heads * d_head):
        ``3 * (d_model * inner + inner) + (inner * d_model + d_model)``.

    Args:
        d_model: width of the inputs and the output.
        n_heads: number of heads h.
        d_head: width of each head; None -> ``d_model // n_heads`` (n_heads must divide d_model).
        dropout: dropout on the attention weights (training only).
        bias: bias in the four projections.
    """

    def __init__(
        self, d_model: int, n_heads: int, d_head: int | None = None, dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        if d_model <= 0:
            raise ValueError(f"d_model must be positive, got {d_model}")
        if n_heads <= 0:
            raise ValueError(f"n_heads must be positive, got {n_heads}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(
                    f"standard heads need n_heads to divide d_model (got d_model={d_model}, n_heads={n_heads}); "
                    "pass d_head explicitly for a flexible head width"
                )
            d_head = d_model // n_heads
        if d_head <= 0:
            raise ValueError(f"d_head must be positive, got {d_head}")
        self.n_heads = n_heads
        self.d_head = d_head
        self.inner_dim = n_heads * d_head
        self.scale = d_head**-0.5
        self.fused = use_fused_attn()

        self.q_proj = nn.Linear(d_model, self.inner_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, self.inner_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, self.inner_dim, bias=bias)
        self.attn_drop = nn.Dropout(dropout)
        self.out_proj = nn.Linear(self.inner_dim, d_model, bias=bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query (B, N, d_model)`` to ``key``/``value (B, S, d_model)``.

        ``key`` defaults to ``query`` and ``value`` to ``key``. Masks as in :func:`merge_masks`.
        A query whose keys are all masked attends to nothing: its head outputs are zero.

        Returns:
            ``(output (B, N, d_model), weights (B, h, N, S) or None)``; the per-head weights
            (before dropout) only when ``need_weights``.
        """
        key = query if key is None else key
        value = key if value is None else value
        B, N, _ = query.shape
        S = key.shape[1]
        q = self.q_proj(query).view(B, N, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, N, d_head)
        k = self.k_proj(key).view(B, S, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, S, d_head)
        v = self.v_proj(value).view(B, S, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, S, d_head)
        mask, empty_rows = merge_masks(N, S, key_padding_mask, attn_mask, is_causal, q.dtype, q.device)

        weights = None
        if self.fused and not need_weights:
            # The fused kernels' fast path: ``mask`` is None unless something is masked (an explicit mask, even an
            # all-zero one, rules the flash kernel out), and q, k, v are (B, h, N, d_head) views of dense
            # (B, N, h, d_head) projections with a unit-stride last dim, the layout flash and memory-efficient
            # attention read in place (calling .contiguous() here would copy for nothing).
            dropout_p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, S)
            if mask is not None:
                attn = attn + mask
            attn = attn.softmax(dim=-1)
            if empty_rows is not None:
                attn = attn.masked_fill(empty_rows, 0.0)
            weights = attn if need_weights else None
            x = self.attn_drop(attn) @ v  # (B, h, N, d_head)
        if empty_rows is not None:
            x = x.masked_fill(empty_rows, 0.0)

        x = x.transpose(1, 2).reshape(B, N, self.inner_dim)  # (B, N, h * d_head)
        return self.out_proj(x), weights
