import pytest
import torch
from torch import nn

from flexheads.nn import EncoderConfig, EncoderLayer, MultiHeadAttention, TransformerEncoder

B, N, S, D_MODEL, H, D_FF = 2, 5, 6, 16, 4, 24
NORMS = ["post", "pre", "none"]
D_HEADS = [None, 8, 3]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomise_norms_(module: nn.Module) -> None:
    """Non-trivial LayerNorm affine parameters, so a swapped norm shows up in the output."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()


def load_torch_mha_(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        for proj, w, b in zip(
            (ours.q_proj, ours.k_proj, ours.v_proj), ref.in_proj_weight.chunk(3), ref.in_proj_bias.chunk(3)
        ):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())


@pytest.mark.parametrize("norm", NORMS)
def test_norm_modules_are_placed_as_named(norm):
    expect = {"pre": (nn.LayerNorm, nn.Identity), "post": (nn.Identity, nn.LayerNorm), "none": (nn.Identity,) * 2}
    pre_type, post_type = expect[norm]
    enc = EncoderLayer(D_MODEL, H, norm=norm)
    for i in (1, 2):
        assert type(getattr(enc, f"pre_norm{i}")) is pre_type
        assert type(getattr(enc, f"post_norm{i}")) is post_type
    final_type = nn.LayerNorm if norm == "pre" else nn.Identity
    assert type(TransformerEncoder(2, D_MODEL, H, norm=norm).final_norm) is final_type


def test_no_layernorm_anywhere_with_norm_none():
    model = TransformerEncoder(2, D_MODEL, H, norm="none")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())


@pytest.mark.parametrize("norm", NORMS)
def test_encoder_layer_computes_named_formula(norm):
    layer = EncoderLayer(D_MODEL, H, d_head=3, d_ff=D_FF, norm=norm).eval()
    randomise_norms_(layer)
    x = torch.randn(B, N, D_MODEL)

    def attn(t: torch.Tensor) -> torch.Tensor:
        return layer.self_attn(t)[0]

    if norm == "pre":
        h = x + attn(layer.pre_norm1(x))
        expected = h + layer.mlp(layer.pre_norm2(h))
    elif norm == "post":
        h = layer.post_norm1(x + attn(x))
        expected = layer.post_norm2(h + layer.mlp(h))
    else:
        h = x + attn(x)
        expected = h + layer.mlp(h)
    torch.testing.assert_close(layer(x)[0], expected)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_layer_matches_torch(norm):
    ref = nn.TransformerEncoderLayer(D_MODEL, H, D_FF, dropout=0.0, batch_first=True, norm_first=norm == "pre")
    ours = EncoderLayer(D_MODEL, H, d_ff=D_FF, norm=norm)
    randomise_norms_(ref)
    load_torch_mha_(ours.self_attn, ref.self_attn)
    ours.mlp.fc1.load_state_dict(ref.linear1.state_dict())
    ours.mlp.fc2.load_state_dict(ref.linear2.state_dict())
    for i, theirs in enumerate((ref.norm1, ref.norm2), start=1):
        getattr(ours, f"{norm}_norm{i}").load_state_dict(theirs.state_dict())
    x = torch.randn(B, N, D_MODEL)
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, -2:] = True
    torch.testing.assert_close(ours(x, key_padding_mask=pad)[0], ref(x, src_key_padding_mask=pad), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d_head", D_HEADS)
@pytest.mark.parametrize("norm", NORMS)
def test_stacks_train_every_parameter_without_nans(norm, d_head):
    encoder = TransformerEncoder(2, D_MODEL, H, d_head, D_FF, dropout=0.1, activation="gelu", norm=norm)
    src = torch.randn(B, S, D_MODEL)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, -2:] = True

    out, enc_weights = encoder(src, key_padding_mask=pad, need_weights=True)
    out.square().mean().backward()

    assert out.shape == (B, S, D_MODEL) and torch.isfinite(out).all()
    assert [w.shape for w in enc_weights] == [(B, H, S, S)] * 2
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    expected_d_head = D_MODEL // H if d_head is None else d_head
    attns = [m for m in encoder.modules() if isinstance(m, MultiHeadAttention)]
    assert len(attns) == 2 and all(a.d_head == expected_d_head for a in attns)


def test_encoder_from_config_builds_what_the_config_says():
    config = EncoderConfig(d_model=D_MODEL, n_heads=H, d_head=12, n_layers=3, d_ff=D_FF, dropout=0.0,
                           activation="gelu", norm="pre", init="xavier")
    encoder = TransformerEncoder.from_config(config)
    assert len(encoder.layers) == 3 and type(encoder.final_norm) is nn.LayerNorm
    layer = encoder.layers[0]
    assert (layer.self_attn.n_heads, layer.self_attn.d_head) == (H, 12) and layer.mlp.fc1.out_features == D_FF
    assert isinstance(layer.mlp.act, nn.GELU) and type(layer.pre_norm1) is nn.LayerNorm
    with pytest.raises(ValueError, match="init"):
        EncoderConfig(**{**config.__dict__, "init": "kaiming"})


def test_weights_only_when_asked():
    _, enc_weights = TransformerEncoder(1, D_MODEL, H)(torch.randn(B, S, D_MODEL))
    assert enc_weights is None


@pytest.mark.parametrize("kwargs, match", [({"norm": "sandwich"}, "norm"), ({"activation": "swish"}, "activation")])
def test_unknown_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderLayer(D_MODEL, H, **kwargs)


def test_d_ff_defaults_to_four_times_d_model():
    assert EncoderLayer(D_MODEL, H).mlp.fc1.out_features == 4 * D_MODEL
