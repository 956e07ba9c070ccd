"""What every model config shares, and the one place a model's encoder is built from params.

A model config is a frozen dataclass without defaults (params.yaml's schema holds them), saved into ``model.pt``
as a plain dict (``to_dict``) and rebuilt from it (``from_dict``), its transformer part one
:class:`~flexheads.nn.EncoderConfig` under the key ``encoder`` (:func:`encoder_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from flexheads.config import RunConfig
from flexheads.nn import EncoderConfig

C = TypeVar("C", bound="ModelConfig")


@dataclass(frozen=True)
class ModelConfig:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], saved: dict[str, Any]) -> C:
        """The config ``to_dict`` wrote (``saved["encoder"]``, where present, becomes an ``EncoderConfig``)."""
        return cls(**{key: EncoderConfig(**value) if key == "encoder" else value for key, value in saved.items()})


def encoder_config(config: RunConfig) -> EncoderConfig:
    """The run's transformer encoder: the task's sizes (``model.<task>``), the run's head configuration
    (``heads.<task>.<attention>``), the regime's LayerNorm placement and init scheme."""
    m = config.model
    n_heads, d_head = config.head_shape
    return EncoderConfig(d_model=m.d_model, n_heads=n_heads, d_head=d_head, n_layers=m.n_layers,
                         d_ff=m.d_ff, dropout=m.dropout, activation=m.activation, norm=config.regime.norm,
                         init=config.regime.init)
