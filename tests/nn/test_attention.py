import pytest
import torch
from torch import nn

from flexheads.nn import MultiHeadAttention

B, N, S, D_MODEL, H = 2, 5, 7, 32, 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def torch_mha_like(attn: MultiHeadAttention) -> nn.MultiheadAttention:
    """A ``torch.nn.MultiheadAttention`` carrying the same weights as a standard-width ``attn``."""
    ref = nn.MultiheadAttention(D_MODEL, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        ref.out_proj.weight.copy_(attn.out_proj.weight)
        ref.out_proj.bias.copy_(attn.out_proj.bias)
    return ref


def padding_mask(key_len: int) -> torch.Tensor:
    """(B, S) with the last keys of the second sample padded; every query keeps at least key 0."""
    mask = torch.zeros(B, key_len, dtype=torch.bool)
    mask[1, key_len - 2 :] = True
    return mask


def causal_mask(query_len: int, key_len: int) -> torch.Tensor:
    return torch.ones(query_len, key_len, dtype=torch.bool).triu(1)


def masks(kind: str, key_len: int) -> dict:
    return {
        "none": {},
        "padding": {"key_padding_mask": padding_mask(key_len)},
        "bool": {"attn_mask": causal_mask(N, key_len)},
        "float": {"attn_mask": torch.randn(N, key_len)},
        "padding+bool": {"key_padding_mask": padding_mask(key_len), "attn_mask": causal_mask(N, key_len)},
    }[kind]


MASK_KINDS = ["none", "padding", "bool", "float", "padding+bool"]


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_matches_torch_multihead_attention(cross, kind):
    attn = MultiHeadAttention(D_MODEL, H).eval()
    ref = torch_mha_like(attn)
    q = torch.randn(B, N, D_MODEL)
    kv = torch.randn(B, S, D_MODEL) if cross else q
    kw = masks(kind, kv.shape[1])

    expected, expected_w = ref(q, kv, kv, need_weights=True, average_attn_weights=False, **kw)
    fused, _ = attn(q, kv if cross else None, **kw)
    explicit, weights = attn(q, kv if cross else None, need_weights=True, **kw)

    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, expected_w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("d_head", [None, 16, 3])
def test_parameter_count_and_shapes(d_head):
    attn = MultiHeadAttention(D_MODEL, H, d_head)
    dh = D_MODEL // H if d_head is None else d_head
    inner = H * dh
    assert (attn.n_heads, attn.d_head, attn.inner_dim) == (H, dh, inner)
    n_params = sum(p.numel() for p in attn.parameters())
    assert n_params == 3 * (D_MODEL * inner + inner) + (inner * D_MODEL + D_MODEL)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert isinstance(proj, nn.Linear) and proj.weight.shape == (inner, D_MODEL)
    assert attn.out_proj.weight.shape == (D_MODEL, inner)

    out, weights = attn(torch.randn(B, N, D_MODEL), torch.randn(B, S, D_MODEL), need_weights=True)
    assert out.shape == (B, N, D_MODEL)
    assert weights.shape == (B, H, N, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, N))
    assert attn(torch.randn(B, N, D_MODEL))[1] is None


@pytest.mark.parametrize("d_head", [None, 16, 3])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_fused_equals_explicit(d_head, kind):
    attn = MultiHeadAttention(D_MODEL, H, d_head).eval()
    q, kv = torch.randn(B, N, D_MODEL), torch.randn(B, S, D_MODEL)
    kw = masks(kind, S)
    fused, _ = attn(q, kv, **kw)
    attn.fused = False
    explicit, _ = attn(q, kv, **kw)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_is_causal_equals_explicit_causal_mask(fused):
    attn = MultiHeadAttention(D_MODEL, H, 12).eval()
    attn.fused = fused
    x = torch.randn(B, N, D_MODEL)
    torch.testing.assert_close(attn(x, is_causal=True)[0], attn(x, attn_mask=causal_mask(N, N))[0])
    _, weights = attn(x, is_causal=True, need_weights=True)
    assert (weights[..., causal_mask(N, N)] == 0).all()


@pytest.mark.parametrize("fused", [True, False])
def test_padded_keys_do_not_change_output(fused):
    attn = MultiHeadAttention(D_MODEL, H, 3).eval()
    attn.fused = fused
    q, kv = torch.randn(B, N, D_MODEL), torch.randn(B, S, D_MODEL)
    pad = padding_mask(S)
    changed = kv.clone()
    changed[pad] = torch.randn(int(pad.sum()), D_MODEL) * 100
    torch.testing.assert_close(attn(q, kv, key_padding_mask=pad)[0], attn(q, changed, key_padding_mask=pad)[0])
    assert not torch.allclose(attn(q, kv)[0], attn(q, changed)[0])


@pytest.mark.parametrize("fused", [True, False])
def test_logits_scaled_by_d_head(fused):
    attn = MultiHeadAttention(D_MODEL, 2, 5).eval()
    attn.fused = fused
    x = torch.randn(B, N, D_MODEL)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, N, 2, 5).transpose(1, 2)  # (B, h, N, d_head)

    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    expected = torch.softmax(q @ k.transpose(-2, -1) / 5**0.5, dim=-1) @ v
    expected = attn.out_proj(expected.transpose(1, 2).reshape(B, N, 10))
    torch.testing.assert_close(attn(x)[0], expected, atol=1e-5, rtol=1e-5)


def fully_masked(how: str) -> dict:
    """Masks under which query 2 of every sample (or every query of sample 1) may attend to nothing."""
    if how == "padding":
        pad = torch.zeros(B, S, dtype=torch.bool)
        pad[1] = True
        return {"key_padding_mask": pad}
    mask = torch.zeros(N, S, dtype=torch.bool)
    mask[2] = True
    if how == "float":
        return {"attn_mask": torch.randn(N, S).masked_fill(mask, float("-inf"))}
    return {"attn_mask": mask, "key_padding_mask": padding_mask(S)} if how == "bool+padding" else {"attn_mask": mask}


@pytest.mark.parametrize("how", ["bool", "float", "padding", "bool+padding"])
def test_fully_masked_row_gives_zero_heads_on_both_paths(how):
    attn = MultiHeadAttention(D_MODEL, H, 6).eval()
    q, kv = torch.randn(B, N, D_MODEL, requires_grad=True), torch.randn(B, S, D_MODEL)
    kw = fully_masked(how)
    fused, _ = attn(q, kv, **kw)
    explicit, weights = attn(q, kv, need_weights=True, **kw)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    empty = (weights.sum(-1) == 0).all(1)  # (B, N): queries with no allowed key
    assert empty.any() and torch.isfinite(fused).all()
    torch.testing.assert_close(fused[empty], attn.out_proj.bias.expand(int(empty.sum()), D_MODEL))
    (fused.sum() + explicit.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters()) and torch.isfinite(q.grad).all()


def test_dropout_only_in_training():
    attn = MultiHeadAttention(D_MODEL, H, dropout=0.5).eval()
    x = torch.randn(B, N, D_MODEL)
    torch.testing.assert_close(attn(x)[0], attn(x)[0])
    attn.train()
    assert not torch.allclose(attn(x)[0], attn(x)[0])


@pytest.mark.parametrize(
    "args, match",
    [((0, 4), "d_model"), ((32, 0), "n_heads"), ((30, 4), "divide"), ((32, 4, 0), "d_head"), ((32, 4, -2), "d_head")],
)
def test_invalid_sizes_raise(args, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(*args)


@pytest.mark.parametrize("d_head", [None, 16])
def test_training_calls_sdpa_without_a_mask_in_the_fused_kernels_layout(monkeypatch, d_head):
    """With nothing to mask, training passes ``attn_mask=None`` (an explicit mask, even all-allowed, rules out the
    flash kernel) and q, k, v whose transpose back to (B, N, h, d_head) is dense: no copy before the kernel."""
    from flexheads.nn import TransformerEncoder

    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        calls.append((q, k, v, args, kwargs))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    encoder = TransformerEncoder(2, D_MODEL, H, d_head, 64, 0.1, "gelu", "pre").train()
    out, weights = encoder(torch.randn(B, N, D_MODEL))
    out.sum().backward()

    assert len(calls) == 2 and weights is None  # one fused call per layer
    for q, k, v, args, kwargs in calls:
        assert args == () and kwargs["attn_mask"] is None and kwargs["dropout_p"] == 0.1
        for t in (q, k, v):
            assert t.stride(-1) == 1 and t.transpose(1, 2).is_contiguous()
