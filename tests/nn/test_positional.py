import math

import pytest
import torch

from flexheads.nn import LearnedPositionalEncoding, sinusoidal_encoding


@pytest.mark.parametrize("d_model", [8, 500, 7])
def test_sinusoidal_values_at_hand_computed_positions(d_model):
    pe = sinusoidal_encoding(4, d_model)
    assert pe.shape == (4, d_model) and pe.dtype == torch.float32
    pos0 = torch.tensor([0.0, 1.0] * (d_model // 2) + [0.0] * (d_model % 2))
    torch.testing.assert_close(pe[0], pos0)
    assert pe[1, 0].item() == pytest.approx(math.sin(1))
    assert pe[1, 1].item() == pytest.approx(math.cos(1))
    assert pe[1, 2].item() == pytest.approx(math.sin(1 / 10000 ** (2 / d_model)))
    assert pe[3, 3].item() == pytest.approx(math.cos(3 / 10000 ** (2 / d_model)))
    i = (d_model - 1) // 2  # last sine column 2i
    assert pe[2, 2 * i].item() == pytest.approx(math.sin(2 / 10000 ** (2 * i / d_model)))


def test_adds_the_first_n_rows():
    enc = LearnedPositionalEncoding(10, 6)
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(enc(x), x + enc.weight[:4])
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.randn(2, 11, 6))


def test_learned_table_init_and_gradient():
    torch.manual_seed(0)
    enc = LearnedPositionalEncoding(200, 64)
    assert [name for name, _ in enc.named_parameters()] == ["weight"]
    assert enc.weight.shape == (200, 64)
    assert enc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    enc(torch.randn(1, 5, 64)).sum().backward()
    assert (enc.weight.grad[:5] == 1).all() and (enc.weight.grad[5:] == 0).all()
