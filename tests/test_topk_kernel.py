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


@needs_kernel
def test_kernel_keeps_exactly_top_k_earliest_keys_on_ties():
    """All scores equal: the kernel keeps the first top_k keys (the PyTorch path keeps all)."""
    T, top_k = 20, 4
    q, k = torch.randn(1, 1, T, 8), torch.zeros(1, 1, T, 8)
    v = torch.eye(T)[None, None]  # output row = attention weights
    w = kernel.topk_attention(q, k, v, top_k)[0, 0]
    expected = torch.zeros(T, T)
    for i in range(T):
        n = min(i + 1, top_k)
        expected[i, :n] = 1 / n
    assert_close(w, expected)


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
