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
    in place, as the official code (github.com/layer6ai-labs/T-Fixup, commit b17e166) initialises its encoder.
    For LayerNorm-free models (``norm='none'``), trained without warmup.  Draws from torch's global RNG, module
    by module in ``model.modules()`` order, so a seed gives the same weights every call.

    With ``N_e = n_encoder_layers`` and ``d`` a module's embedding width (output features / channels):

    1. input embeddings, i.e. every ``nn.Embedding`` (token tables, e.g. a CLS token) and every module named
       ``embed`` (an ``nn.Linear`` / ``nn.Conv2d`` projecting continuous inputs to ``d_model``):
       started as the official code starts token tables (``fairseq/models/transformer.py`` L908-912
       ``Embedding``: ``N(0, d^-1)``), an ``embed`` projection as its ``Linear`` (L915-920: Xavier-uniform,
       gain 1, bias 0), then weight × ``sqrt(d) * (9 N_e)^-1/4``.  ``(9 N_e)^-1/4`` is the T-Fixup factor of
       the encoder's token embedding (L378-381); ``sqrt(d)`` is the official ``embed_scale`` (L385), which
       multiplies the embedded tokens in ``forward_embedding`` (L424).  We fold it into the weight so that
       every model's ``forward`` stays the same under every scheme; at init this is exactly equivalent (a
       constant times a linear map's output), though not in training (under Adam the official unfolded
       factor makes the embedding's effective steps ``sqrt(d)`` times larger);
    2. ``LearnedPositionalEncoding`` tables: ``N(0, d^-1)``, *not* scaled (``fairseq/modules/
       positional_embedding.py`` L24-25: the learned positions are drawn so and T-Fixup never touches them);
    3. ``q_proj``, ``k_proj``, ``v_proj`` of every :class:`MultiHeadAttention`: weight Xavier-uniform with gain
       ``1/sqrt(2)`` (``fairseq/modules/multihead_attention.py`` L85-91), bias left at ``nn.Linear``'s
       default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the official ``reset_parameters`` zeroes only
       ``out_proj.bias``, L97-99), redrawn here so the result does not depend on earlier draws;
    4. every other ``nn.Linear`` (``out_proj`` L97-99, ``fc1``/``fc2`` and heads as ``Linear``
       L915-920): Xavier-uniform, gain 1, bias 0 (fans as in the module docstring);
    5. each of the ``N_e`` :class:`EncoderLayer` s (``fairseq/modules/transformer_layer.py`` L31-49
       ``fixup_initialization``): ``mlp.fc1``, ``mlp.fc2``, ``self_attn.out_proj`` weights
       × ``0.67 * N_e^-1/4``; ``self_attn.v_proj`` weight × ``0.67 * N_e^-1/4 * sqrt(2)``.

    Where this extrapolates the official recipe: the ``0.67 * N^-1/4`` encoder factor was derived for
    encoder–decoder models and is applied here to encoder-only models (flexheads has no decoder), with
    ``N = N_e``; and the continuous-input ``embed`` projections have no official counterpart (the official code
    embeds discrete tokens only), so the token-embedding treatment (start, ``sqrt(d)``, ``(9 N_e)^-1/4``) is
    transferred to them.  Head width ``inner = n_heads * d_head != d_model`` (flexible heads) keeps the same
    gains; Xavier's fans follow the actual shapes.

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
    inputs = _input_embeddings(model)
    qkv = {proj for m in model.modules() if isinstance(m, MultiHeadAttention)
           for proj in (m.q_proj, m.k_proj, m.v_proj)}

    for module in model.modules():
        if module in inputs:
            _start_input_embedding(module, (9 * n_encoder_layers) ** -0.25)
        elif isinstance(module, LearnedPositionalEncoding):
            nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
        elif module in qkv:
            _xavier_linear(module, gain=2**-0.5, default_bias=True)
        elif isinstance(module, nn.Linear):
            _xavier_linear(module)
    for layer in encoder_layers:
        _scale_residual_branches(layer, 0.67 * n_encoder_layers**-0.25)


def _xavier_linear(module: nn.Linear | nn.Conv2d, gain: float = 1.0, default_bias: bool = False) -> None:
    """Xavier-uniform weight; bias 0, or (``default_bias``) ``nn.Linear``'s default ``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))``."""
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is None:
        return
    if default_bias:
        bound = module.weight[0].numel() ** -0.5  # 1/sqrt(fan_in), as nn.Linear.reset_parameters
        nn.init.uniform_(module.bias, -bound, bound)
    else:
        nn.init.zeros_(module.bias)


def _start_input_embedding(module: nn.Embedding | nn.Linear | nn.Conv2d, t_fixup_factor: float) -> None:
    """A table ``N(0, d^-1)`` or a projection Xavier-uniform (bias 0), then weight × ``sqrt(d) * t_fixup_factor``."""
    if isinstance(module, nn.Embedding):
        d = module.embedding_dim
        nn.init.normal_(module.weight, std=d**-0.5)
    else:
        d = module.weight.shape[0]  # out_features / out_channels
        _xavier_linear(module)
    module.weight.mul_(math.sqrt(d) * t_fixup_factor)


def _scale_residual_branches(layer: EncoderLayer, factor: float) -> None:
    """MLP and ``W_O`` weights × factor, ``W_V`` × factor·√2 (undoing the 1/√2 Xavier gain of step 3)."""
    layer.mlp.fc1.weight.mul_(factor)
    layer.mlp.fc2.weight.mul_(factor)
    layer.self_attn.out_proj.weight.mul_(factor)
    layer.self_attn.v_proj.weight.mul_(factor * math.sqrt(2))


def _input_embeddings(model: nn.Module) -> set[nn.Module]:
    """Every ``nn.Embedding`` and every module named ``embed`` (which must be a table or a projection)."""
    found = set()
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == EMBED_NAME:
            if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) is named {EMBED_NAME!r} but t_fixup_ only "
                    "scales nn.Linear, nn.Conv2d or nn.Embedding input embeddings"
                )
            found.add(module)
        elif isinstance(module, nn.Embedding):
            found.add(module)
    return found
