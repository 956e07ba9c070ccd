"""The thesis's chest X-ray model: a Vision Transformer (Dosovitskiy et al. 2021) over grayscale patches.

A radiograph ``(B, 1, S, S)`` in [0, 1] is standardised with the training split's pixel mean and std (buffers,
saved with the weights), cut into ``(S / p)^2`` non-overlapping ``p × p`` patches by a stride-``p`` convolution
``embed`` (a shared linear map of each patch), prefixed with a learned CLS token, given a learned position per
token, and passed through the configured encoder (standard or flexible heads, Post-LN, Pre-LN or no LayerNorm).
A linear head reads the CLS token's output: one logit per finding (multi-label, sigmoid/BCE outside the model).

The model has no LayerNorm of its own: Post-LN ends each layer with one, Pre-LN's encoder ends with its
``final_norm`` (the LayerNorm timm's ViT puts before the head), and no-LN (T-Fixup) has none anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flexheads.models.config import ModelConfig
from flexheads.nn import EncoderConfig, LearnedPositionalEncoding, TransformerEncoder, init_weights

__all__ = ["ViTConfig", "VisionTransformer"]


@dataclass(frozen=True)
class ViTConfig(ModelConfig):
    image_size: int  # data.cxr.image_size: prepare resizes every radiograph to S × S
    patch_size: int  # model.cxr.patch_size: 64 px → an 8 × 8 grid, 65 tokens with CLS
    in_channels: int  # 1: grayscale radiographs
    n_classes: int  # 15: the 14 ChestX-ray14 findings + COVID-19
    encoder: EncoderConfig

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size}): patches do not overlap"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)``; the encoder sees ``1 + rows * cols`` tokens (CLS first, then row-major)."""
        side = self.image_size // self.patch_size
        return side, side


class VisionTransformer(nn.Module):
    """Radiograph → finding logits; see the module docstring.

    Initialisation (:func:`flexheads.nn.init_weights`): ``init='tfixup'`` applies :func:`flexheads.nn.t_fixup_`,
    which treats ``embed`` and the CLS token as the official code treats its token embedding: ``embed``
    Xavier-uniform (bias 0), the CLS token ``N(0, 1/d_model)``, both × ``sqrt(d_model)`` (the official
    ``embed_scale``, folded into the weights) × ``(9 N)^-1/4``; the position table ``N(0, 1/d_model)`` unscaled,
    as the official learned positions. Over torch's conv fans (``fan_in = C p^2``, ``fan_out = d_model p^2``) a
    standardised patch then gives tokens of std ``≈ sqrt(2 C d_model / (C + d_model)) (9 N)^-1/4``, about
    ``1.4 (9 N)^-1/4`` at ``C = 1``: the order of the official model's embedded tokens, of std ``(9 N)^-1/4``
    (its table's ``d_model^-1/2`` is undone by ``embed_scale``, not a token scale).
    ``init='xavier'`` applies :func:`flexheads.nn.xavier_` (CLS token and positions ``N(0, 0.02^2)`` as in ViT,
    ``embed`` the same Xavier-uniform start). The CLS token is an ``nn.Embedding(1, d_model)`` so that both
    schemes treat it as the input embedding it is.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c, p, d = config.in_channels, config.patch_size, config.encoder.d_model
        rows, cols = config.grid
        self.embed = nn.Conv2d(c, d, kernel_size=p, stride=p)  # named `embed`: T-Fixup's token embedding
        self.cls_token = nn.Embedding(1, d)
        self.positions = LearnedPositionalEncoding(1 + rows * cols, d)
        self.encoder = TransformerEncoder.from_config(config.encoder)
        self.head = nn.Linear(d, config.n_classes)
        # Training-split pixel statistics (set_pixel_stats): persistent, so a checkpoint standardises by itself.
        self.register_buffer("pixel_mean", torch.zeros(c, 1, 1))
        self.register_buffer("pixel_std", torch.ones(c, 1, 1))
        init_weights(self, config.encoder.init)

    @torch.no_grad()
    def set_pixel_stats(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        """Standardise inputs with these per-channel statistics of [0, 1] pixels; a std below 1e-6 counts as 1."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand_as(self.pixel_mean)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand_as(self.pixel_std)
        self.pixel_mean.copy_(mean)
        self.pixel_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, images: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """``images (B, C, S, S)`` in [0, 1] → ``(logits (B, n_classes), per-layer self-attention
        [(B, h, 1 + rows * cols, 1 + rows * cols)] or None)``, token 0 being CLS."""
        c, s = self.config.in_channels, self.config.image_size
        if tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")
        x = (images - self.pixel_mean) / self.pixel_std
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, rows * cols, d_model)
        cls = self.cls_token.weight.expand(len(x), -1, -1)  # (B, 1, d_model)
        x = self.positions(torch.cat([cls, x], dim=1))  # (B, 1 + rows * cols, d_model)
        x, weights = self.encoder(x, need_weights=need_weights)
        return self.head(x[:, 0]), weights  # (B, n_classes)
