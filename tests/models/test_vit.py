"""Invariants of flexheads.models.vit on CPU-sized inputs, parametrised over norm scheme and head width."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexheads.models.vit import VisionTransformer, ViTConfig
from flexheads.nn import EncoderConfig

B, S, P, D_MODEL, H, N_LAYERS = 3, 16, 4, 32, 4, 2
NORMS = ["post", "pre", "none"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_config(norm: str = "post", d_head: int | None = None, **overrides) -> ViTConfig:
    """A small ViT; ``norm='none'`` goes with T-Fixup, as the tfixup regime pairs them."""
    encoder = {"d_model": D_MODEL, "n_heads": H, "d_head": d_head, "n_layers": N_LAYERS, "d_ff": 64, "dropout": 0.0,
               "activation": "gelu", "norm": norm, "init": "tfixup" if norm == "none" else "xavier"}
    settings = {"image_size": S, "patch_size": P, "in_channels": 1, "n_classes": 15}
    encoder |= {k: v for k, v in overrides.items() if k in encoder}
    settings |= {k: v for k, v in overrides.items() if k not in encoder}
    return ViTConfig(**settings, encoder=EncoderConfig(**encoder))


def images(n: int = B) -> torch.Tensor:
    return torch.rand(n, 1, S, S)


@pytest.mark.parametrize("d_head", [None, 5])
@pytest.mark.parametrize("norm", NORMS)
def test_shapes_and_attention_maps(norm, d_head):
    model = VisionTransformer(make_config(norm, d_head)).eval()
    logits, weights = model(images())
    assert logits.shape == (B, 15) and weights is None
    assert torch.isfinite(logits).all()
    tokens = 1 + (S // P) ** 2
    _, weights = model(images(), need_weights=True)
    assert len(weights) == N_LAYERS
    assert all(w.shape == (B, H, tokens, tokens) for w in weights)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(B, H, tokens))


def test_fused_and_explicit_attention_agree():
    model = VisionTransformer(make_config("pre")).eval()
    x = images()
    torch.testing.assert_close(model(x)[0], model(x, need_weights=True)[0], rtol=1e-5, atol=1e-5)


def test_config_grid_round_trip_and_validation():
    config = make_config(d_head=7)
    assert config.grid == (S // P, S // P)
    assert ViTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="must divide"):
        make_config(image_size=18)
    with pytest.raises(ValueError, match="init"):
        make_config(init="kaiming")
    with pytest.raises(ValueError, match="expected images"):
        VisionTransformer(config)(torch.rand(B, 1, S, S + P))


def test_flexible_heads_change_only_the_attention_width():
    """Per layer the four projections hold ``4 d_model inner + 3 inner + d_model`` parameters, inner = h d_head."""
    standard = VisionTransformer(make_config(d_head=None))
    flexible = VisionTransformer(make_config(d_head=12))
    n_std, n_flex = (sum(p.numel() for p in m.parameters()) for m in (standard, flexible))
    assert n_flex - n_std == N_LAYERS * (4 * D_MODEL + 3) * (H * 12 - D_MODEL)
    assert flexible.encoder.layers[0].self_attn.q_proj.out_features == H * 12


@pytest.mark.parametrize(("norm", "n_layer_norms"), [("post", 2 * N_LAYERS), ("pre", 2 * N_LAYERS + 1), ("none", 0)])
def test_layer_norms_are_the_encoders_only(norm, n_layer_norms):
    """Post-LN ends on its last layer's norm, Pre-LN on the encoder's final norm, T-Fixup has none: no double
    normalisation before the head."""
    model = VisionTransformer(make_config(norm))
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == n_layer_norms


# T-Fixup's factors at N = N_LAYERS = 2, d = D_MODEL = 32, computed by hand from the official formulas:
EMBED_FACTOR = 0.48549177170732344  # (9 N)^-1/4 = 18^-1/4
EMBED_SCALE = 5.656854249492381  # embed_scale = sqrt(d) = sqrt(32)
TABLE_STD = 0.1767766952966369  # N(0, d^-1): std 32^-1/2


def test_initialisation_of_the_input_embeddings():
    """Xavier: CLS and positions N(0, 0.02^2), ``embed`` Xavier-uniform over torch's conv fans. T-Fixup: ``embed``
    the same × sqrt(d) (9 N)^-1/4, CLS N(0, 1/d) × sqrt(d) (9 N)^-1/4 (std (9 N)^-1/4), positions N(0, 1/d)."""
    fans = P * P * (1 + D_MODEL)  # fan_in + fan_out of the conv: C p^2 + d_model p^2
    xavier = VisionTransformer(make_config("post"))
    tfixup = VisionTransformer(make_config("none"))
    for model, cls_std, pos_std, scale in [(xavier, 0.02, 0.02, 1.0),
                                           (tfixup, EMBED_FACTOR, TABLE_STD, EMBED_SCALE * EMBED_FACTOR)]:
        assert model.cls_token.weight.std().item() == pytest.approx(cls_std, rel=0.3)
        assert model.positions.weight.std().item() == pytest.approx(pos_std, rel=0.15)
        bound = scale * math.sqrt(6 / fans)
        assert model.embed.weight.abs().max().item() <= bound * (1 + 1e-6)
        assert model.embed.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert not model.embed.bias.any()


def test_t_fixup_tokens_enter_the_encoder_at_the_official_scale():
    """The official model's embedded tokens have per-element std ``(9 N)^-1/4`` (a N(0, 1/d) row × sqrt(d) ×
    (9 N)^-1/4); the ViT's, for unit-std standardised pixels, must be of that order (here ~1.4×, since
    Xavier gives ``sqrt(2 C d / (C + d))`` with C = 1), not ~sqrt(d) times smaller."""
    model = VisionTransformer(make_config("none"))
    model.set_pixel_stats(0.5, 12**-0.5)  # U(0, 1) pixels standardise to unit std
    entering = []
    model.encoder.register_forward_pre_hook(lambda module, args: entering.append(args[0]))
    model(torch.rand(64, 1, S, S))
    ratio = entering[0].std().item() / EMBED_FACTOR
    assert 0.7 < ratio < 2.0, ratio


def test_pixel_statistics_standardise_inside_and_travel_with_the_weights():
    model = VisionTransformer(make_config()).eval()
    x = images()
    reference = model(x)[0]
    model.set_pixel_stats(0.4, 0.2)
    torch.testing.assert_close(model(x * 0.2 + 0.4)[0], reference)  # inputs with that mean and std
    reloaded = VisionTransformer(make_config()).eval()
    reloaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(reloaded(x)[0], model(x)[0])
    model.set_pixel_stats(0.5, 0.0)  # a constant image: std 0 counts as 1
    assert model.pixel_std.item() == 1.0


def blob_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images, half with a bright 4 × 4 square somewhere: label (B, 15) has finding 0 set for those."""
    x = 0.3 + 0.1 * torch.rand(n, 1, S, S, generator=generator)
    labels = torch.zeros(n, 15)
    labels[:, 0] = (torch.rand(n, generator=generator) < 0.5).float()
    corners = torch.randint(0, S - 4, (n, 2), generator=generator)
    for i in labels[:, 0].nonzero().flatten().tolist():
        r, c = corners[i].tolist()
        x[i, :, r : r + 4, c : c + 4] += 0.5
    return x, labels


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_scheme_learns_and_every_parameter_gets_a_gradient(norm):
    model = VisionTransformer(make_config(norm))
    model.set_pixel_stats(0.4, 0.15)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        x, y = blob_batch(32, generator)
        loss = F.binary_cross_entropy_with_logits(model(x)[0], y)
        optimiser.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
