"""Weight initialisation schemes as named, in-place functions.

Xavier fan convention (also for flexible heads): for ``nn.Linear(d_in, d_out)`` (weight ``(d_out, d_in)``)
``fan_in = d_in`` and ``fan_out = d_out``, so a Xavier-uniform weight is ``U(-a, a)`` with

    a = gain * sqrt(6 / (fan_in + fan_out))

e.g. ``q_proj``/``k_proj``/``v_proj``: ``fan_in = d_model``, ``fan_out = n_heads * d_head``;
``out_proj``: ``fan_in = n_heads * d_head``, ``fan_out = d_model``. This is torch's ``xavier_uniform_``.
"""
import math

import torch
from torch import nn

from .attention import MultiHeadAttention
from .blocks import INITS, EncoderLayer
from .positional import LearnedPositionalEncoding

__all__ = ["init_weights", "xavier_", "t_fixup_"]

EMBED_NAME = "embed"  # attribute name marking an input projection (Xavier-started by both schemes, scaled by T-Fixup)


def init_weights(model: nn.Module, scheme: str) -> None:
    """Initialise ``model`` in place with ``scheme``: ``'xavier'`` (:func:`xavier_`) or ``'tfixup'``
    (:func:`t_fixup_` over every :class:`EncoderLayer` of the model).  Every flexheads model calls this last in
    its ``__init__``; a CNN trunk keeps its own initialisation under both."""
    if scheme not in INITS:
        raise ValueError(f"init scheme must be one of {INITS}, got {scheme!r}")
    if scheme == "tfixup":
        t_fixup_(model, n_encoder_layers=sum(isinstance(m, EncoderLayer) for m in model.modules()))
    else:
        xavier_(model)


@torch.no_grad()
def xavier_(model: nn.Module) -> None:
    """Xavier / Glorot initialisation (Glorot & Bengio 2010, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS), in place.

    * every ``nn.Linear`` and every ``nn.Conv2d`` named ``embed`` (a patch or feature embedding, started as
      T-Fixup starts it before its scaling): weight Xavier-uniform (gain 1, fans as in the module docstring;
      torch's conv fans ``C k^2`` and ``d k^2``), bias 0;
    * every ``nn.LayerNorm``: weight 1, bias 0;
    * ``nn.Embedding`` and ``LearnedPositionalEncoding.weight``: ``N(0, 0.02^2)``.

    Other modules (e.g. convolutions of a CNN backbone) keep their own initialisation.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and name.rsplit(".", 1)[-1] == EMBED_NAME):
            _xavier_linear(module)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, LearnedPositionalEncoding)):
            nn.init.normal_(module.weight, std=0.02)


@torch.no_grad()
def t_fixup_(model: nn.Module, n_encoder_layers: int) -> None:
    """T-Fixup (Huang et al. 2020, "Improving Transformer Optimization Through Better Initialization", ICML),
    in place, as the official code applies it. For LayerNorm-free models (``norm='none'``), trained without warmup.

    With ``N_e = n_encoder_layers`` (flexheads models are encoder-only):

    1. every ``nn.Linear``: Xavier-uniform, gain 1, bias 0 (fans as in the module docstring);
       ``q_proj``, ``k_proj``, ``v_proj`` of every :class:`MultiHeadAttention`: Xavier-uniform, gain ``1/sqrt(2)``;
    2. ``nn.Embedding`` and ``LearnedPositionalEncoding.weight``: ``N(0, d^-1)``, i.e. std ``d^-1/2``
       with ``d`` the embedding width;
    3. each of the ``N_e`` :class:`EncoderLayer` s: ``mlp.fc1``, ``mlp.fc2``, ``self_attn.out_proj`` weights
       × ``0.67 * N_e^-1/4``; ``self_attn.v_proj`` weight × ``0.67 * N_e^-1/4 * sqrt(2)``;
    4. input embeddings × ``(9 N_e)^-1/4``.

    Naming convention: the *input embeddings* are all ``nn.Embedding`` / ``LearnedPositionalEncoding`` tables
    plus any module registered under the attribute name ``embed`` anywhere in the model (an ``nn.Linear``
    or ``nn.Conv2d`` projecting inputs to ``d_model``, e.g. joint or patch embedding); an ``embed`` projection
    is Xavier-uniform (gain 1) with zero bias before the scaling.

    Raises:
        ValueError: if the model contains an ``nn.LayerNorm``, if the number of ``EncoderLayer`` modules differs
            from ``n_encoder_layers`` or is 0, or if an ``embed`` module is not ``nn.Linear`` / ``nn.Conv2d`` /
            ``nn.Embedding``.
    """
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        raise ValueError("t_fixup_ is for LayerNorm-free models; build the blocks with norm='none'")
    encoder_layers = [m for m in model.modules() if isinstance(m, EncoderLayer)]
    if len(encoder_layers) != n_encoder_layers:
        raise ValueError(f"t_fixup_ got n_encoder_layers={n_encoder_layers} but the model has "
                         f"{len(encoder_layers)} EncoderLayer modules")
    if n_encoder_layers <= 0:
        raise ValueError("t_fixup_ needs at least one EncoderLayer")

    for module in model.modules():
        if isinstance(module, nn.Linear):
            _xavier_linear(module)
        elif isinstance(module, (nn.Embedding, LearnedPositionalEncoding)):
            nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                _xavier_linear(proj, gain=2**-0.5)

    for layer in encoder_layers:
        _scale_residual_branches(layer, 0.67 * n_encoder_layers**-0.25)
    for module in _input_embeddings(model):
        if isinstance(module, nn.Conv2d):
            _xavier_linear(module)
        module.weight.mul_((9 * n_encoder_layers) ** -0.25)


def _xavier_linear(module: nn.Linear | nn.Conv2d, gain: float = 1.0) -> None:
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _scale_residual_branches(layer: EncoderLayer, factor: float) -> None:
    """MLP and ``W_O`` weights × factor, ``W_V`` × factor·√2 (undoing the 1/√2 Xavier gain of step 1)."""
    layer.mlp.fc1.weight.mul_(factor)
    layer.mlp.fc2.weight.mul_(factor)
    layer.self_attn.out_proj.weight.mul_(factor)
    layer.self_attn.v_proj.weight.mul_(factor * math.sqrt(2))


def _input_embeddings(model: nn.Module) -> list[nn.Module]:
    """Embedding tables, learned positional tables and modules named ``embed`` (each once)."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == EMBED_NAME:
            if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) is named {EMBED_NAME!r} but t_fixup_ only "
                    "scales nn.Linear, nn.Conv2d or nn.Embedding input embeddings"
                )
            found.append(module)
        elif isinstance(module, (nn.Embedding, LearnedPositionalEncoding)):
            found.append(module)
    return found
