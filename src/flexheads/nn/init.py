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
from .blocks import DecoderLayer, EncoderLayer
from .positional import LearnedPositionalEncoding

__all__ = ["xavier_", "t_fixup_"]

EMBED_NAME = "embed"  # attribute name marking an input projection for t_fixup_


@torch.no_grad()
def xavier_(model: nn.Module) -> None:
    """Xavier / Glorot initialisation (Glorot & Bengio 2010, "Understanding the difficulty of training deep
    feedforward neural networks", AISTATS), in place.

    * every ``nn.Linear``: weight Xavier-uniform (gain 1, fans as in the module docstring), bias 0;
    * every ``nn.LayerNorm``: weight 1, bias 0;
    * ``nn.Embedding`` and ``LearnedPositionalEncoding.weight``: ``N(0, 0.02^2)``.

    Other modules (e.g. convolutions of a CNN backbone) keep their own initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _xavier_linear(module)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, LearnedPositionalEncoding)):
            nn.init.normal_(module.weight, std=0.02)


@torch.no_grad()
def t_fixup_(model: nn.Module, n_encoder_layers: int, n_decoder_layers: int = 0) -> None:
    """T-Fixup (Huang et al. 2020, "Improving Transformer Optimization Through Better Initialization", ICML),
    in place, as the official code applies it. For LayerNorm-free models (``norm='none'``), trained without warmup.

    With ``N_e = n_encoder_layers``, ``N_d = n_decoder_layers`` and ``N = N_d if N_d > 0 else N_e``:

    1. every ``nn.Linear``: Xavier-uniform, gain 1, bias 0 (fans as in the module docstring);
       ``q_proj``, ``k_proj``, ``v_proj`` of every :class:`MultiHeadAttention`: Xavier-uniform, gain ``1/sqrt(2)``;
    2. ``nn.Embedding`` and ``LearnedPositionalEncoding.weight``: ``N(0, d^-1)``, i.e. std ``d^-1/2``
       with ``d`` the embedding width;
    3. each of the ``N_e`` :class:`EncoderLayer` s: ``mlp.fc1``, ``mlp.fc2``, ``self_attn.out_proj`` weights
       × ``0.67 * N_e^-1/4``; ``self_attn.v_proj`` weight × ``0.67 * N_e^-1/4 * sqrt(2)``;
    4. each of the ``N_d`` :class:`DecoderLayer` s: ``mlp.fc1``, ``mlp.fc2`` and the ``out_proj`` of
       ``self_attn`` and ``cross_attn`` × ``(9 N_d)^-1/4``; both ``v_proj`` × ``(9 N_d)^-1/4 * sqrt(2)``;
    5. input embeddings × ``(9 N)^-1/4``.

    Naming convention: the *input embeddings* are all ``nn.Embedding`` / ``LearnedPositionalEncoding`` tables
    plus any module registered under the attribute name ``embed`` anywhere in the model (an ``nn.Linear``
    or ``nn.Conv2d`` projecting inputs to ``d_model``, e.g. joint or patch embedding); an ``embed`` projection
    is Xavier-uniform (gain 1) with zero bias before the scaling.

    Raises:
        ValueError: if the model contains an ``nn.LayerNorm``, if the numbers of ``EncoderLayer`` /
            ``DecoderLayer`` modules differ from the arguments, if there are no layers at all, or if an
            ``embed`` module is not ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Embedding``.
    """
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        raise ValueError("t_fixup_ is for LayerNorm-free models; build the blocks with norm='none'")
    encoder_layers = [m for m in model.modules() if isinstance(m, EncoderLayer)]
    decoder_layers = [m for m in model.modules() if isinstance(m, DecoderLayer)]
    if (len(encoder_layers), len(decoder_layers)) != (n_encoder_layers, n_decoder_layers):
        raise ValueError(
            f"t_fixup_ got n_encoder_layers={n_encoder_layers}, n_decoder_layers={n_decoder_layers} but the model "
            f"has {len(encoder_layers)} EncoderLayer and {len(decoder_layers)} DecoderLayer modules"
        )
    n = n_decoder_layers if n_decoder_layers > 0 else n_encoder_layers
    if n <= 0:
        raise ValueError("t_fixup_ needs at least one EncoderLayer or DecoderLayer")

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
        _scale_residual_branches(layer, [layer.self_attn], 0.67 * n_encoder_layers**-0.25)
    for layer in decoder_layers:
        _scale_residual_branches(layer, [layer.self_attn, layer.cross_attn], (9 * n_decoder_layers) ** -0.25)
    for module in _input_embeddings(model):
        if isinstance(module, nn.Conv2d):
            _xavier_linear(module)
        module.weight.mul_((9 * n) ** -0.25)


def _xavier_linear(module: nn.Linear | nn.Conv2d, gain: float = 1.0) -> None:
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _scale_residual_branches(
    layer: EncoderLayer | DecoderLayer, attns: list[MultiHeadAttention], factor: float
) -> None:
    """MLP and ``W_O`` weights × factor, ``W_V`` × factor·√2 (undoing the 1/√2 Xavier gain of step 1)."""
    layer.mlp.fc1.weight.mul_(factor)
    layer.mlp.fc2.weight.mul_(factor)
    for attn in attns:
        attn.out_proj.weight.mul_(factor)
        attn.v_proj.weight.mul_(factor * math.sqrt(2))


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
