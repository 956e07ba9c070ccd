"""The thesis's 3D pose lifter: 17 joints as tokens, a transformer encoder, a per-joint 3D head.

Each joint token embeds that joint's standardised 2D track over a window of ``W`` frames (``W * 2``
numbers), adds a learned joint-identity embedding, passes the configured encoder (standard or flexible
heads, Post-LN, Pre-LN or no LayerNorm) and regresses the joint's standardised root-relative 3D position.
Inputs and outputs are standardised per joint with the training split's statistics (``Standardiser``).  The root
(joint 0) is (0, 0, 0) by construction: its token still carries its 2D track through the encoder, but the head's
output for it is dropped and the root is set to 0 (``Standardiser.inverse_with_root``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flexheads.models.config import ModelConfig
from flexheads.models.standardise import Standardiser
from flexheads.nn import EncoderConfig, LearnedPositionalEncoding, TransformerEncoder, init_weights


@dataclass(frozen=True)
class LifterConfig(ModelConfig):
    n_joints: int
    window: int  # frames of 2D input per token (odd, centred on the target frame)
    encoder: EncoderConfig


class PoseLifter(nn.Module):
    """2D tracks → root-relative 3D; see the module docstring.

    Initialisation (:func:`flexheads.nn.init_weights`): ``init='tfixup'`` applies :func:`flexheads.nn.t_fixup_`:
    ``embed`` Xavier-uniform × ``sqrt(d_model) (9 N)^-1/4`` (T-Fixup's token-embedding treatment, transferred to
    this continuous projection), the joint-identity table ``joint_embed`` ``N(0, 1/d_model)`` unscaled (a learned
    positional table, as in the official code).  ``init='xavier'``: :func:`flexheads.nn.xavier_`.
    """

    def __init__(self, config: LifterConfig) -> None:
        super().__init__()
        self.config = config
        d = config.encoder.d_model
        self.embed = nn.Linear(config.window * 2, d)  # named `embed`: T-Fixup treats it as the token embedding
        self.joint_embed = LearnedPositionalEncoding(config.n_joints, d)
        self.encoder = TransformerEncoder.from_config(config.encoder)
        self.head = nn.Linear(d, 3)
        self.input_norm = Standardiser(config.n_joints, 2)
        self.output_norm = Standardiser(config.n_joints, 3)
        init_weights(self, config.encoder.init)

    def forward(self, keypoints_2d: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """``(B, W, J, 2)`` screen-normalised 2D tracks → ``(B, J, 3)`` root-relative 3D (metres), attention maps."""
        tokens = self.input_norm(keypoints_2d).permute(0, 2, 1, 3).flatten(2)  # (B, J, W*2)
        x = self.joint_embed(self.embed(tokens))  # (B, J, d_model)
        x, weights = self.encoder(x, need_weights=need_weights)
        y = self.head(x[:, 1:])  # (B, J - 1, 3): no output for the root token, the root being 0
        return self.output_norm.inverse_with_root(y), weights  # (B, J, 3)


def mpjpe_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Training loss: mean Euclidean joint error, ``mean ||pred - target||_2`` (metres)."""
    return torch.linalg.vector_norm(pred - target, dim=-1).mean()
