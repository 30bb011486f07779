"""The C top-k attention kernel against the PyTorch path it replaces (outputs and gradients)."""

import subprocess
import sys

import pytest
import torch
from conftest import outputs_and_grads

from tilelli.kernels import build
from tilelli.kernels import topk_attention as kernel
from tilelli.model.pathways.attention import topk_causal_attention

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="top-k kernel unavailable (no C compiler?)")


def reference(q, k, v, top_k, offset=0):
    with kernel.kernel_disabled():
        return topk_causal_attention(q, k, v, top_k, offset)


def assert_close(a, b):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max().item()


@needs_kernel
@pytest.mark.parametrize("T", [1, 5, 16, 17, 64, 200])
@pytest.mark.parametrize("top_k", [1, 4, 16])
@pytest.mark.parametrize("dk,dv", [(8, 8), (8, 24)])
def test_kernel_matches_pytorch_path(T, top_k, dk, dv):
    torch.manual_seed(T * 100 + top_k + dv)
    q, k, v = (torch.randn(2, 3, T, d, requires_grad=True) for d in (dk, dk, dv))
    y, grads = outputs_and_grads(kernel.topk_attention, [q, k, v], q, k, v, top_k)
    y_ref, grads_ref = outputs_and_grads(reference, [q, k, v], q, k, v, top_k)
    assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)


@needs_kernel
def test_kernel_on_transposed_projection_views():
    """Training layout: q, k, v are (B, T, H, d) -> (B, H, T, d) views of one projection."""
    torch.manual_seed(0)
    B, T, H, d = 2, 70, 4, 40
    qkv = torch.randn(B, T, 3 * H * d, requires_grad=True)

    def attend(fn):
        q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in qkv.split(H * d, dim=-1))
        return fn(q, k, v, 16).transpose(1, 2).reshape(B, T, H * d)

    y, (g,) = outputs_and_grads(attend, [qkv], kernel.topk_attention)
    y_ref, (g_ref,) = outputs_and_grads(attend, [qkv], reference)
    assert_close(y, y_ref)
    assert_close(g, g_ref)


@needs_kernel
@pytest.mark.parametrize("offset,Tq", [(30, 1), (30, 7), (5, 40)])
def test_kernel_with_offset_on_cache_slices(offset, Tq):
    """Queries after `offset` cached positions; k, v are slices of a larger cache buffer."""
    torch.manual_seed(offset + Tq)
    B, H, max_len, dk, dv = 2, 3, 64, 8, 24
    k_buf = torch.randn(B, H, max_len, dk, requires_grad=True)
    v_buf = torch.randn(B, H, max_len, dv, requires_grad=True)
    q = torch.randn(B, H, Tq, dk, requires_grad=True)

    def attend(fn):
        L = offset + Tq
        return fn(q, k_buf[:, :, :L], v_buf[:, :, :L], 4, offset)

    y, grads = outputs_and_grads(attend, [q, k_buf, v_buf], kernel.topk_attention)
    y_ref, grads_ref = outputs_and_grads(attend, [q, k_buf, v_buf], reference)
    assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)


@needs_kernel
@pytest.mark.parametrize("pattern", ["increasing", "decreasing", "periodic", "permuted"])
def test_kernel_on_structured_scores(pattern):
    """Orders that defeat the candidate prefilter (periodic) or stress it (monotone)."""
    T, top_k = 256, 16
    j = torch.arange(T, dtype=torch.float32)
    f = {"increasing": j, "decreasing": -j, "periodic": (j % top_k == 0) * 1000.0 + 0.5 * j,
         "permuted": (j * 37) % T}[pattern]
    q = torch.zeros(1, 2, T, 8)
    q[..., 0] = 0.01
    k = torch.randn(1, 2, T, 8) * 1e-3
    k[..., 0] = f
    v = torch.randn(1, 2, T, 8)
    assert_close(kernel.topk_attention(q, k, v, top_k), reference(q, k, v, top_k))


@needs_kernel
def test_kernel_without_autograd():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 33, 8, requires_grad=True) for _ in range(3))
    y_ref = reference(q, k, v, 4).detach()
    with torch.no_grad():
        y = kernel.topk_attention(q, k, v, 4)
    assert y.grad_fn is None
    assert_close(y, y_ref)
    with torch.inference_mode():
        assert_close(kernel.topk_attention(q, k, v, 4), y_ref)


@needs_kernel
def test_pytorch_path_dispatches_to_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8) for _ in range(3))
    assert kernel.applicable(q, k, v, 4, 0)
    assert torch.equal(topk_causal_attention(q, k, v, 4), kernel.topk_attention(q, k, v, 4))
    assert not kernel.applicable(q.double(), k.double(), v.double(), 4, 0)
    assert not kernel.applicable(q, k, v, 0, 0) and not kernel.applicable(q, k, v, 40, 0)
    with kernel.kernel_disabled():
        assert not kernel.applicable(q, k, v, 4, 0)


def earliest_top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """The tie rule written plainly: a stable sort by score, highest first, keeps the top_k
    first; causal (row i sees keys 0..i). (T, T) scores -> (T, T) bool."""
    T = scores.shape[-1]
    keep = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        order = torch.sort(-scores[i, :i + 1], stable=True).indices
        keep[i, order[:top_k]] = True
    return keep


def both_paths(q, k, v, top_k):
    """(kernel, PyTorch path) outputs, each with its gradients."""
    leaves = [t.requires_grad_() for t in (q, k, v)]
    return (outputs_and_grads(kernel.topk_attention, leaves, *leaves, top_k),
            outputs_and_grads(reference, leaves, *leaves, top_k))


@needs_kernel
@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_ties_keep_the_earliest_keys_in_both_paths(top_k):
    """Integer-valued q and k: scores are exact, and equal scores are everywhere, at and across
    the k-th place. Both paths keep exactly the keys of the plain rule (v = identity, so each
    output row is that query's attention weights) and agree to 1e-6, gradients too."""
    torch.manual_seed(top_k)
    T = 40
    q = torch.randint(-2, 3, (1, 1, T, 4)).float()
    k = torch.randint(-1, 2, (1, 1, T, 4)).float()
    scores = (q @ k.transpose(-2, -1))[0, 0]
    keep = earliest_top_k(scores, top_k)
    kth = torch.stack([scores[i, :i + 1].sort(descending=True).values[min(top_k, i + 1) - 1] for i in range(T)])
    tied = (scores == kth[:, None]).tril()
    assert ((tied & keep).sum(1) < tied.sum(1)).sum() >= 10  # ties straddle the k-th place in many rows
    (y, grads), (y_ref, grads_ref) = both_paths(q, k, torch.eye(T)[None, None], top_k)
    assert torch.equal(y[0, 0] > 0, keep) and torch.equal(y_ref[0, 0] > 0, keep)
    assert (y - y_ref).abs().max() <= 1e-6
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g - g_ref).abs().max() <= 1e-6
    (y, _), (y_ref, _) = both_paths(q, k, torch.randn(1, 1, T, 16), top_k)  # real values: same outputs
    assert (y - y_ref).abs().max() <= 1e-6


@needs_kernel
def test_duplicate_keys_straddling_the_kth_place():
    """Two keys score above the rest, then five equal keys: top_k 4 keeps the two and the first
    two of the five (both paths); all-equal keys keep the first top_k."""
    T, top_k = 9, 4
    q = torch.ones(1, 1, T, 2)
    k = torch.tensor([1.0, 1, 3, 1, 1, 3, 1, 0, 0])[None, None, :, None].expand(1, 1, T, 2).contiguous()
    v = torch.eye(T)[None, None]  # output row = attention weights
    for fn in (kernel.topk_attention, reference):
        w = fn(q, k, v, top_k)[0, 0]
        assert torch.equal((w[8] > 0).nonzero().flatten(), torch.tensor([0, 1, 2, 5]))  # row 8 sees all 9 keys
        assert (w[8, [2, 5]] > w[8, 0]).all()
        w = fn(q, torch.zeros_like(k), v, top_k)[0, 0]
        expected = torch.zeros(T, T)
        for i in range(T):
            expected[i, :min(i + 1, top_k)] = 1 / min(i + 1, top_k)
        assert (w - expected).abs().max() <= 1e-6


@needs_kernel
def test_kernel_survives_nan_scores():
    """NaN inputs give NaN outputs, never a crash or an out-of-range key index."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 100, 8, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        k[:, :, 10] = float("nan")
        q[0, 0, ::7] = float("nan")
    y = kernel.topk_attention(q, k, v, 4)
    y.sum().backward()
    assert torch.isnan(y[0, 0, ::7]).all() and torch.isfinite(y[1, :, :10]).all()


def test_no_kernel_env_disables(monkeypatch):
    monkeypatch.setenv("TILELLI_NO_KERNEL", "1")
    assert not kernel.available()


def test_failed_build_notes_and_falls_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TILELLI_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "COMPILER", "no-such-compiler-tilelli")
    monkeypatch.setattr(build, "_noted", set())
    monkeypatch.setattr(kernel.library, "_lib", None)
    monkeypatch.setattr(kernel.library, "_tried", False)
    assert not kernel.available()
    assert "tilelli: note: native kernels unavailable (no C compiler" in capsys.readouterr().err
    assert not kernel.available()  # decided once
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    assert topk_causal_attention(q, k, v, 4).shape == (1, 2, 9, 8)  # the PyTorch path


def test_import_does_not_build():
    code = ("import tilelli.model.pathways.attention, tilelli.kernels.topk_attention as k; "
            "print(k.library._tried, k.library._lib)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "None"]
