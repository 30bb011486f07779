"""The C causal-conv kernel against the F.conv1d path it replaces (outputs and gradients)."""

import contextlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import outputs_and_grads

from tilelli.kernels import causal_conv as kernel
from tilelli.model.config import TernaryOptions
from tilelli.model.pathways.conv import CausalConv

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="causal conv kernel unavailable (no C compiler?)")


def reference(x, w, history=None):
    """F.conv1d over the transposed input, history (or zeros) prepended: (B, T, C)."""
    xt = x.transpose(1, 2)  # (B, C, T)
    xt = F.pad(xt, (w.shape[-1] - 1, 0)) if history is None else torch.cat([history.transpose(1, 2), xt], 2)
    return F.conv1d(xt, w, groups=w.shape[0]).transpose(1, 2)


def assert_close(a, b, tol=1e-5):
    """|a - b| <= tol, relative to the largest entry of b where that exceeds 1: dw sums B*T
    products (|dw| ~ 90 at T=256), where float32 spacing is 8e-6 and conv1d itself is off by
    up to 5e-5 from the float64 result, so an absolute 1e-5 cannot hold for any other order."""
    assert a.shape == b.shape
    atol = tol * max(1.0, b.abs().max().item())
    assert torch.allclose(a.to(b.dtype), b, atol=atol, rtol=0), ((a - b).abs().max().item(), atol)


@needs_kernel
@pytest.mark.parametrize("with_history", [False, True])
@pytest.mark.parametrize("C", [1, 7, 320])
@pytest.mark.parametrize("T", [1, 3, 20, 256])
@pytest.mark.parametrize("k", [1, 2, 5, 21])
def test_kernel_matches_conv1d(k, T, C, with_history):
    torch.manual_seed(k * 1000 + T * 10 + C)
    B = 2
    x = torch.randn(B, T, C, requires_grad=True)
    w = (torch.randn(C, 1, k) / k**0.5).requires_grad_()
    h = torch.randn(B, k - 1, C, requires_grad=True) if with_history else None
    leaves = [x, w] + ([h] if with_history and k > 1 else [])
    y, grads = outputs_and_grads(kernel.causal_conv, leaves, x, w, h)
    y_ref, grads_ref = outputs_and_grads(reference, leaves, x, w, h)
    assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)


@needs_kernel
@pytest.mark.parametrize("k", [5, 21])
def test_kernel_is_as_accurate_as_float32_allows(k):
    """Against the float64 result: output, dx and dw within 1e-6 of their largest entries
    (conv1d in float32 is at ~2e-7, the kernel at ~3e-7 at most)."""
    torch.manual_seed(k)
    B, T, C = 16, 256, 64
    x64, dy64 = torch.randn(B, T, C, dtype=torch.float64), torch.randn(B, T, C, dtype=torch.float64)
    w64 = torch.randn(C, 1, k, dtype=torch.float64) / k**0.5

    def run(fn, dtype):
        x, w = x64.to(dtype).requires_grad_(), w64.to(dtype).requires_grad_()
        y = fn(x, w)
        y.backward(dy64.to(dtype))
        return y.detach(), x.grad, w.grad

    for got, exact in zip(run(kernel.causal_conv, torch.float32), run(reference, torch.float64), strict=True):
        assert_close(got, exact, tol=1e-6)


@needs_kernel
def test_kernel_on_strided_views():
    """x a channel slice of a wider projection, history a time slice of a longer buffer."""
    torch.manual_seed(0)
    B, T, C, k = 3, 50, 24, 5
    wide = torch.randn(B, T, 3 * C, requires_grad=True)
    buf = torch.randn(B, k - 1 + 9, C, requires_grad=True)
    w = torch.randn(C, 1, k, requires_grad=True)

    def conv(fn):
        return fn(wide[:, :, C:2 * C], w, buf[:, 9:])

    y, grads = outputs_and_grads(conv, [wide, buf, w], kernel.causal_conv)
    y_ref, grads_ref = outputs_and_grads(conv, [wide, buf, w], reference)
    assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)


@needs_kernel
def test_weight_gradient_is_bit_identical_run_to_run():
    torch.manual_seed(0)
    x = torch.randn(16, 256, 64, requires_grad=True)
    w = torch.randn(64, 1, 21, requires_grad=True)
    dy = torch.randn(16, 256, 64)
    grads = []
    for threads in (2, 2, 1):  # the dw sum has a fixed order: the thread count does not matter
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            w.grad = None
            kernel.causal_conv(x, w).backward(dy)
            grads.append(w.grad.clone())
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


@needs_kernel
def test_kernel_without_autograd():
    torch.manual_seed(0)
    x = torch.randn(2, 30, 7, requires_grad=True)
    w = torch.randn(7, 1, 5, requires_grad=True)
    y_ref = reference(x, w).detach()
    with torch.no_grad():
        y = kernel.causal_conv(x, w)
    assert y.grad_fn is None
    assert_close(y, y_ref)
    with torch.inference_mode():
        assert_close(kernel.causal_conv(x, w), y_ref)


@needs_kernel
def test_layer_dispatches_to_kernel_and_reaches_the_latent_weight():
    """CausalConv uses the kernel; outputs and the latent weight's gradient (through the
    ternary straight-through quantizer) equal the conv1d path's."""
    torch.manual_seed(0)
    conv = CausalConv(12, 5, TernaryOptions(quantize=True))
    x = torch.randn(2, 40, 12, requires_grad=True)
    assert kernel.applicable(x, conv.effective_weight())
    y, (gx, gw) = outputs_and_grads(conv, [x, conv.weight], x)
    with kernel.kernel_disabled():
        assert not kernel.applicable(x, conv.effective_weight())
        y_ref, (gx_ref, gw_ref) = outputs_and_grads(conv, [x, conv.weight], x)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)
    assert_close(gw, gw_ref)
    assert not kernel.applicable(x.double(), conv.effective_weight().double())


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_stepping_with_a_cache_equals_the_full_pass(use_kernel, k):
    """The (B, k-1, C) cache on both paths: a prompt, single steps, then a chunk."""
    if use_kernel and not kernel.available():
        pytest.skip("causal conv kernel unavailable")
    torch.manual_seed(k)
    conv = CausalConv(6, k, TernaryOptions(quantize=False))
    x = torch.randn(2, 20, 6)
    with torch.no_grad(), (contextlib.nullcontext() if use_kernel else kernel.kernel_disabled()):
        full = reference(x, conv.weight)
        cache = conv.init_cache(2, 20, torch.device("cpu"))
        steps = [conv(x[:, :7], cache)] + [conv(x[:, t:t + 1], cache) for t in range(7, 12)] + [conv(x[:, 12:], cache)]
        assert torch.equal(cache.buf, x[:, 20 - (k - 1):])
    assert_close(torch.cat(steps, 1), full)


def test_import_does_not_build():
    code = "import tilelli.model.models, tilelli.kernels.causal_conv as k; print(k.library._tried, k.library._lib)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "None"]


@needs_kernel
def test_bad_shapes_are_refused():
    x, w = torch.randn(2, 9, 7), torch.randn(7, 1, 5)
    with pytest.raises(ValueError, match="history"):
        kernel.causal_conv(x, w, torch.randn(2, 3, 7))  # k-1 = 4 rows needed
    with pytest.raises(ValueError, match="w \\(8, 1, 5\\)"):
        kernel.causal_conv(x, torch.randn(8, 1, 5))
    with pytest.raises(ValueError, match="float64"):
        kernel.causal_conv(x.double(), w.double())
