import math

import pytest
import torch
from torch import nn

from flexheads.nn import (
    LearnedPositionalEncoding,
    MultiHeadAttention,
    TransformerEncoder,
    init_weights,
    t_fixup_,
    xavier_,
)

D_MODEL, H, D_HEAD, D_FF = 64, 4, 24, 256  # inner = 96 != d_model: the fan convention matters
N_E = 3


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def xavier_bound(linear: nn.Linear) -> float:
    """sqrt(6 / (fan_in + fan_out)) with fan_in = in_features, fan_out = out_features."""
    return math.sqrt(6 / (linear.in_features + linear.out_features))


def assert_uniform(w: torch.Tensor, bound: float) -> None:
    """``w ~ U(-bound, bound)``: never above the bound, the max close to it, std = bound / sqrt(3)."""
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    assert w.abs().max().item() >= 0.95 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


class Model(nn.Module):
    """Pose-lifter-like toy: input projection `embed`, positions, token table, encoder, head."""

    def __init__(self, norm: str = "none") -> None:
        super().__init__()
        self.embed = nn.Linear(34, D_MODEL)
        self.pos = LearnedPositionalEncoding(17, D_MODEL)
        self.queries = nn.Embedding(17, D_MODEL)
        self.encoder = TransformerEncoder(N_E, D_MODEL, H, D_HEAD, D_FF, norm=norm)
        self.head = nn.Linear(D_MODEL, 3)


def test_xavier_fan_convention_on_flexible_head():
    attn = MultiHeadAttention(D_MODEL, H, D_HEAD)
    xavier_(attn)
    assert attn.q_proj.weight.shape == (H * D_HEAD, D_MODEL)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        assert_uniform(proj.weight, math.sqrt(6 / (D_MODEL + H * D_HEAD)))
        assert (proj.bias == 0).all()


def test_xavier_covers_norms_and_embeddings():
    model = Model(norm="pre")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_()
                m.bias.normal_()
    xavier_(model)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all()
        if isinstance(m, nn.Linear):
            assert_uniform(m.weight, xavier_bound(m))
            assert (m.bias == 0).all()
    for table in (model.pos.weight, model.queries.weight):
        assert table.std().item() == pytest.approx(0.02, rel=0.1)


# The official factors (github.com/layer6ai-labs/T-Fixup) for N_e = 3, d = D_MODEL = 64, computed by hand:
EMBED_FACTOR = 0.4386913376508308  # (9 N_e)^-1/4 = 27^-1/4 (fairseq/models/transformer.py L380)
EMBED_SCALE = 8.0  # embed_scale = sqrt(d) = sqrt(64) (transformer.py L385, L424)
# Embedding / learned positions N(0, d^-1): std 64^-1/2 (transformer.py L910, positional_embedding.py L25)
TABLE_STD = 0.125
ENC_FACTOR = 0.5090899093865671  # 0.67 N_e^-1/4 = 0.67 * 3^-1/4 (fairseq/modules/transformer_layer.py L42)
V_FACTOR = 0.7199618543217732  # 0.67 N_e^-1/4 sqrt(2) (transformer_layer.py L44)
QKV_GAIN = 0.7071067811865476  # 1/sqrt(2) (fairseq/modules/multihead_attention.py L89-91)
QKV_BIAS_BOUND = 0.125  # nn.Linear's default bias bound 1/sqrt(fan_in) = 1/sqrt(d_model) = 64^-1/2


def test_t_fixup_factors():
    model = Model()
    t_fixup_(model, N_E)

    for layer in model.encoder.layers:
        for fc in (layer.mlp.fc1, layer.mlp.fc2):
            assert_uniform(fc.weight, xavier_bound(fc) * ENC_FACTOR)
        attn = layer.self_attn
        assert_uniform(attn.q_proj.weight, xavier_bound(attn.q_proj) * QKV_GAIN)
        assert_uniform(attn.k_proj.weight, xavier_bound(attn.k_proj) * QKV_GAIN)
        assert_uniform(attn.v_proj.weight, xavier_bound(attn.v_proj) * QKV_GAIN * V_FACTOR)
        assert_uniform(attn.out_proj.weight, xavier_bound(attn.out_proj) * ENC_FACTOR)
        for zero_bias in (layer.mlp.fc1.bias, layer.mlp.fc2.bias, attn.out_proj.bias):
            assert (zero_bias == 0).all()

    # embed: Xavier (gain 1, bias 0), then x sqrt(d) (9 N_e)^-1/4; the head: Xavier alone
    assert_uniform(model.embed.weight, xavier_bound(model.embed) * EMBED_SCALE * EMBED_FACTOR)
    assert (model.embed.bias == 0).all()
    assert_uniform(model.head.weight, xavier_bound(model.head))
    assert (model.head.bias == 0).all()
    # token table: N(0, d^-1) x sqrt(d) (9 N_e)^-1/4, std (9 N_e)^-1/4; learned positions N(0, d^-1), unscaled
    assert model.queries.weight.std().item() == pytest.approx(EMBED_FACTOR, rel=0.1)
    assert model.queries.weight.mean().item() == pytest.approx(0, abs=0.1 * EMBED_FACTOR)
    assert model.pos.weight.std().item() == pytest.approx(TABLE_STD, rel=0.1)


def test_t_fixup_leaves_qkv_biases_at_the_linear_default():
    """The official code zeroes ``out_proj.bias`` only: q/k/v biases stay ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    model = Model()
    t_fixup_(model, N_E)
    attns = [layer.self_attn for layer in model.encoder.layers]
    biases = torch.cat([proj.bias for a in attns for proj in (a.q_proj, a.k_proj, a.v_proj)])  # 3 * 3 * 96 values
    assert (biases != 0).all()
    assert_uniform(biases, QKV_BIAS_BOUND)


def test_t_fixup_treats_a_conv_embed_as_a_token_embedding():
    model = nn.Module()
    model.patch = nn.Module()
    model.patch.embed = nn.Conv2d(3, D_MODEL, kernel_size=4, stride=4)
    model.encoder = TransformerEncoder(N_E, D_MODEL, H, D_HEAD, D_FF, norm="none")
    t_fixup_(model, N_E)
    fan_in, fan_out = 3 * 16, D_MODEL * 16  # torch's conv fans: C k^2, d k^2
    assert_uniform(model.patch.embed.weight, math.sqrt(6 / (fan_in + fan_out)) * EMBED_SCALE * EMBED_FACTOR)
    assert (model.patch.embed.bias == 0).all()


def test_t_fixup_rejects_an_embed_it_cannot_treat():
    model = Model()
    model.embed = nn.Sequential(nn.Linear(34, D_MODEL))
    with pytest.raises(ValueError, match="named 'embed'"):
        t_fixup_(model, N_E)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_t_fixup_rejects_layernorm(norm):
    with pytest.raises(ValueError, match="LayerNorm"):
        t_fixup_(Model(norm=norm), N_E)


@pytest.mark.parametrize("n_layers", [N_E + 1, N_E - 1, 0])
def test_t_fixup_rejects_wrong_layer_counts(n_layers):
    with pytest.raises(ValueError, match="EncoderLayer"):
        t_fixup_(Model(), n_layers)


def test_t_fixup_model_trains():
    model = Model()
    t_fixup_(model, N_E)
    x = model.embed(torch.randn(2, 17, 34))
    out, _ = model.encoder(model.pos(x) + model.queries.weight)
    model.head(out).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_init_weights_dispatches_to_the_named_scheme():
    reference, model = Model(), Model()
    torch.manual_seed(1)
    t_fixup_(reference, N_E)
    torch.manual_seed(1)
    init_weights(model, "tfixup")  # counts the encoder layers itself
    for (name, expected), got in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=name)
    torch.manual_seed(2)
    xavier_(reference)
    torch.manual_seed(2)
    init_weights(model, "xavier")
    for (name, expected), got in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=name)
    with pytest.raises(ValueError, match="init scheme"):
        init_weights(model, "kaiming")


def test_xavier_starts_a_conv_embedding_and_leaves_other_convs():
    model = nn.Module()
    model.trunk = nn.Conv2d(3, 8, kernel_size=3)
    model.embed = nn.Conv2d(8, D_MODEL, kernel_size=2, stride=2)
    before = model.trunk.weight.clone()
    xavier_(model)
    assert torch.equal(model.trunk.weight, before)
    assert_uniform(model.embed.weight, math.sqrt(6 / (8 * 4 + D_MODEL * 4)))
    assert (model.embed.bias == 0).all()
