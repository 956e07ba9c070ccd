"""Transformer building blocks with flexible head width, norm placement and init schemes."""
from .attention import MultiHeadAttention, merge_masks, use_fused_attn
from .blocks import ACTIVATIONS, NORMS, DecoderLayer, EncoderLayer, Mlp, TransformerDecoder, TransformerEncoder
from .init import t_fixup_, xavier_
from .positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding, sinusoidal_encoding

__all__ = [
    "MultiHeadAttention",
    "merge_masks",
    "use_fused_attn",
    "NORMS",
    "ACTIVATIONS",
    "Mlp",
    "EncoderLayer",
    "DecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "xavier_",
    "t_fixup_",
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEncoding",
]
