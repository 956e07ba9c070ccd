"""Reference models for the report's baseline rows.

``MartinezMLP``: the "simple yet effective" lifting baseline (Martinez et al., ICCV 2017): the flattened
standardised 2D pose → Linear(1024) → ``n_blocks`` residual blocks of two (Linear, BatchNorm, ReLU, Dropout)
→ Linear to the 16 non-root joints × 3 (the original's 48 outputs: it never predicts the root); the root,
joint 0 of the root-relative pose, is inserted as exactly (0, 0, 0) (``Standardiser.inverse_with_root``).
The weights use Kaiming init as in the original code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from flexheads.models.config import ModelConfig
from flexheads.models.standardise import Standardiser


@dataclass(frozen=True)
class MartinezConfig(ModelConfig):
    n_joints: int
    window: int  # frames of 2D input, flattened together
    hidden: int
    n_blocks: int
    dropout: float


def _dense(hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout))


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(_dense(hidden, dropout), _dense(hidden, dropout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class MartinezMLP(nn.Module):
    def __init__(self, config: MartinezConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = Standardiser(config.n_joints, 2)
        self.output_norm = Standardiser(config.n_joints, 3)
        self.embed = nn.Sequential(
            nn.Linear(config.window * config.n_joints * 2, config.hidden), nn.BatchNorm1d(config.hidden), nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.blocks = nn.Sequential(*(ResidualBlock(config.hidden, config.dropout) for _ in range(config.n_blocks)))
        self.head = nn.Linear(config.hidden, (config.n_joints - 1) * 3)  # every joint but the root
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, keypoints_2d: Tensor, need_weights: bool = False) -> tuple[Tensor, None]:
        """``(B, W, J, 2)`` screen-normalised 2D → ``(B, J, 3)`` root-relative 3D (metres); no attention maps."""
        x = self.input_norm(keypoints_2d).flatten(1)  # (B, W*J*2)
        y = self.head(self.blocks(self.embed(x))).view(-1, self.config.n_joints - 1, 3)
        return self.output_norm.inverse_with_root(y), None
