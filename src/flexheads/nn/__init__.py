"""Transformer building blocks with flexible head width, norm placement and init schemes."""
from .attention import MultiHeadAttention, attention_flops, merge_masks, use_fused_attn
from .blocks import ACTIVATIONS, INITS, NORMS, EncoderConfig, EncoderLayer, Mlp, TransformerEncoder
from .init import init_weights, t_fixup_, xavier_
from .positional import LearnedPositionalEncoding, sinusoidal_encoding

__all__ = [
    "MultiHeadAttention",
    "attention_flops",
    "merge_masks",
    "use_fused_attn",
    "NORMS",
    "ACTIVATIONS",
    "INITS",
    "EncoderConfig",
    "Mlp",
    "EncoderLayer",
    "TransformerEncoder",
    "init_weights",
    "xavier_",
    "t_fixup_",
    "sinusoidal_encoding",
    "LearnedPositionalEncoding",
]
