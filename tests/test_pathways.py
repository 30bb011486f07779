import pytest
import torch

from tilelli.model.config import TernaryOptions
from tilelli.model.pathways import CausalAttention, Dense, StateSpace
from tilelli.model.pathways.attention import topk_causal_attention
from tilelli.model.pathways.state import diagonal_scan


def literal_topk_attention(q, k, v, top_k):
    """Straight from the definition: mask future, keep the top_k scores per query, softmax."""
    T, d = q.shape[2], q.shape[3]
    s = (q @ k.transpose(-2, -1)) / d ** 0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    kth = s.topk(min(top_k, T), -1).values[..., -1:]
    return s.masked_fill(s < kth, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("T", [5, 16, 17, 64, 130])
def test_topk_attention_matches_literal_definition(T):
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    assert torch.allclose(topk_causal_attention(q, k, v, 16), literal_topk_attention(q, k, v, 16), atol=1e-5)


def test_topk_attention_uses_exactly_k_keys():
    torch.manual_seed(0)
    T, k_ = 40, 4
    q, k = torch.randn(1, 1, T, 8), torch.randn(1, 1, T, 8)
    v = torch.eye(T)[None, None]  # output row = attention weights
    w = topk_causal_attention(q, k, v, k_)[0, 0]
    nonzero = (w > 0).sum(-1)
    assert nonzero[:k_].tolist() == list(range(1, k_ + 1))  # early positions use what exists
    assert (nonzero[k_:] == k_).all()
    assert torch.equal(w.triu(1), torch.zeros_like(w))  # causal


def test_state_space_parallel_equals_recurrent_over_512_steps():
    torch.manual_seed(0)
    ssm = StateSpace(16)
    with torch.no_grad():
        ssm.a_raw.uniform_(-2.0, 3.0)  # includes negative a
    x = torch.randn(2, 512, 16)
    full = ssm(x)
    cache = ssm.init_cache(2, 512, torch.device("cpu"))
    steps = torch.cat([ssm(x[:, t:t + 1], cache) for t in range(512)], 1)
    assert torch.allclose(full, steps, atol=1e-5)


def test_diagonal_scan_with_initial_state_and_chunks():
    torch.manual_seed(0)
    u, a, h0 = torch.randn(2, 100, 4), torch.rand(4) * 1.8 - 0.9, torch.randn(2, 4)
    h, ref = h0, []
    for t in range(100):
        h = a * h + u[:, t]
        ref.append(h)
    assert torch.allclose(diagonal_scan(u, a, h0, chunk=16), torch.stack(ref, 1), atol=1e-5)


def test_state_space_parameters_get_gradients():
    ssm = StateSpace(8)
    ssm(torch.randn(2, 30, 8)).sum().backward()
    for p in (ssm.a_raw, ssm.b, ssm.c):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("top_k", [0, 4])
@pytest.mark.parametrize("quantize", [False, True])
def test_attention_kv_cache_matches_full(top_k, quantize):
    torch.manual_seed(0)
    attn = CausalAttention(24, 3, 8, 8, top_k, True, TernaryOptions(quantize=quantize)).eval()
    x = torch.randn(2, 70, 24)
    with torch.no_grad():
        full = attn(x)
        cache = attn.init_cache(2, 70, torch.device("cpu"))
        steps = [attn(x[:, :20], cache, 0)] + [attn(x[:, t:t + 1], cache, t) for t in range(20, 70)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_kv_cache_overflow_is_an_error():
    attn = CausalAttention(8, 1, 8, 8, 0, False, TernaryOptions())
    cache = attn.init_cache(1, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="KV cache holds 4"):
        attn(torch.randn(1, 5, 8), cache)


def test_dense_shape_and_stateless_cache():
    d = Dense(8, 4, TernaryOptions(quantize=True))
    assert d.init_cache(1, 10, torch.device("cpu")) is None
    assert d(torch.randn(2, 3, 8)).shape == (2, 3, 8)
