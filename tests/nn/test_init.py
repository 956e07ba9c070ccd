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


def test_t_fixup_factors():
    model = Model()
    t_fixup_(model, N_E)
    enc_factor = 0.67 * N_E**-0.25
    embed_factor = (9 * N_E) ** -0.25
    qk_gain = 2**-0.5

    for layer in model.encoder.layers:
        for fc in (layer.mlp.fc1, layer.mlp.fc2):
            assert_uniform(fc.weight, xavier_bound(fc) * enc_factor)
        attn = layer.self_attn
        assert_uniform(attn.q_proj.weight, xavier_bound(attn.q_proj) * qk_gain)
        assert_uniform(attn.k_proj.weight, xavier_bound(attn.k_proj) * qk_gain)
        assert_uniform(attn.v_proj.weight, xavier_bound(attn.v_proj) * qk_gain * enc_factor * math.sqrt(2))
        assert_uniform(attn.out_proj.weight, xavier_bound(attn.out_proj) * enc_factor)

    assert_uniform(model.embed.weight, xavier_bound(model.embed) * embed_factor)
    assert_uniform(model.head.weight, xavier_bound(model.head))
    for table in (model.pos.weight, model.queries.weight):
        assert table.std().item() == pytest.approx(D_MODEL**-0.5 * embed_factor, rel=0.1)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all(), name


def test_t_fixup_encoder_only_uses_n_e_and_conv_embed():
    model = nn.Module()
    model.patch = nn.Module()
    model.patch.embed = nn.Conv2d(3, D_MODEL, kernel_size=4, stride=4)
    model.encoder = TransformerEncoder(N_E, D_MODEL, H, D_HEAD, D_FF, norm="none")
    t_fixup_(model, N_E)
    conv = model.patch.embed
    fan_in, fan_out = 3 * 16, D_MODEL * 16
    assert_uniform(conv.weight, math.sqrt(6 / (fan_in + fan_out)) * (9 * N_E) ** -0.25)
    assert (conv.bias == 0).all()


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
