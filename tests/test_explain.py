"""Grad-CAM on the cxr ViT (flexheads.explain): the mechanism on a toy task where the finding is a bright disc.

A tiny ViT learns "is there a disc?" in ~2 s on CPU; Grad-CAM of that finding must then point at the disc far more
often than a uniform map, whose pointing-game score is the disc's area fraction (with a tolerance of half a patch,
the resolution of a ViT's CAM).

Pre-LN is checked for well-formed maps only. On this toy its Grad-CAM does not localise (pointing game about at
chance over 1-3 layers, whether read at the last layer's LayerNorm or at the residual stream entering it): ablating
the disc's tokens at the last layer's input drops the logit by ~11 with one layer, but the gradient's linear
estimate of that drop is negative (the LayerNorms' scale invariance saturates the logit), and with two layers the
decision already sits in the CLS token before the last layer (ablating there changes the logit by < 0.01). Grad-CAM
is a first-order method; with Post-LN and no-LN the first-order estimate has the right sign and the maps localise.
"""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flexheads import explain
from flexheads.explain import gradcam_maps
from flexheads.metrics.localisation import baseline_heatmaps, pointing_game
from flexheads.models.vit import VisionTransformer, ViTConfig
from flexheads.nn import EncoderConfig

S, P, RADIUS = 32, 4, 3


def discs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noise images ``(n, 1, S, S)``, half with a bright disc at a random place: labels ``(n, 1)``, masks ``(n, S, S)``
    (the disc, drawn for every image)."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    centres = torch.randint(RADIUS, S - RADIUS, (n, 2), generator=generator)
    masks = (rows - centres[:, :1, None]) ** 2 + (cols - centres[:, 1:, None]) ** 2 <= RADIUS**2
    labels = torch.rand(n, generator=generator) < 0.5
    noise = 0.1 * torch.rand(n, S, S, generator=generator)
    images = 0.3 + noise + 0.5 * (masks & labels[:, None, None])
    return images[:, None], labels.float()[:, None], masks.numpy()


def make_model(norm: str, n_layers: int) -> VisionTransformer:
    torch.manual_seed(0)
    encoder = EncoderConfig(d_model=32, n_heads=4, d_head=None, n_layers=n_layers, d_ff=64, dropout=0.0,
                            activation="gelu", norm=norm, init="tfixup" if norm == "none" else "xavier")
    config = ViTConfig(image_size=S, patch_size=P, in_channels=1, n_classes=1, encoder=encoder)
    model = VisionTransformer(config)
    model.set_pixel_stats(0.4, 0.15)
    return model


@functools.cache
def trained(norm: str, n_layers: int) -> VisionTransformer:
    model = make_model(norm, n_layers)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(80):
        images, labels, _ = discs(32, seed=step)
        loss = F.binary_cross_entropy_with_logits(model(images)[0], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def positives(n: int = 200) -> tuple[torch.Tensor, np.ndarray]:
    """Held-out images that show a disc, and the discs' masks."""
    images, labels, masks = discs(n, seed=10_000)
    keep = labels[:, 0].bool()
    return images[keep], masks[keep.numpy()]


@pytest.mark.parametrize(("norm", "n_layers"), [("post", 1), ("post", 2), ("none", 2)])
def test_gradcam_points_at_the_finding(norm, n_layers):
    model = trained(norm, n_layers)
    images, masks = positives()
    with torch.no_grad():
        assert (model(images)[0] > 0).float().mean() > 0.95  # the toy is learnt
    maps = gradcam_maps(model, images, [0] * len(images))
    hits = pointing_game(maps, masks, tolerance=P / 2).mean()
    chance = pointing_game(baseline_heatmaps("uniform", masks.shape), masks, tolerance=P / 2).mean()  # ~0.07
    assert hits > 0.8 and hits > 5 * chance


@pytest.mark.parametrize(("norm", "n_layers"), [("post", 2), ("pre", 1), ("pre", 2), ("none", 1), ("none", 2)])
def test_gradcam_maps_are_well_formed_and_deterministic(norm, n_layers):
    model = trained(norm, n_layers).train()
    images, _ = positives(40)
    maps = gradcam_maps(model, images, [0] * len(images), batch_size=64)
    assert maps.shape == (len(images), S, S) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    assert ((peaks > 0.99) | (peaks == 0)).all()  # each scaled to a peak of 1, or all zero (no patch raises the logit)
    assert (peaks > 0.99).mean() > 0.75  # mostly not degenerate
    assert np.ptp(maps, axis=0).max() > 0.5  # the maps follow the image
    np.testing.assert_allclose(gradcam_maps(model, images, [0] * len(images), batch_size=7), maps, atol=1e-5)
    assert model.training and all(p.grad is None for p in model.parameters())  # the model is left as it was


@pytest.mark.parametrize("norm", ["post", "pre", "none"])
def test_the_last_layers_output_would_give_empty_maps(norm, monkeypatch):
    """The pitfall the target layer avoids: the head reads only CLS, so the output patch tokens get no gradient."""
    model = trained(norm, 2)
    images, _ = positives(20)
    assert gradcam_maps(model, images, [0] * len(images)).max() > 0
    monkeypatch.setattr(explain, "gradcam_target_layer", lambda m: m.encoder.final_norm)
    assert gradcam_maps(model, images, [0] * len(images)).max() == 0


def test_bad_class_indices_are_rejected():
    model = make_model("post", n_layers=1)
    images, _, _ = discs(4, seed=0)
    with pytest.raises(ValueError, match="class indices"):
        gradcam_maps(model, images, [0, 0, 1, 0])
    with pytest.raises(ValueError, match="N class indices"):
        gradcam_maps(model, images, [0])
