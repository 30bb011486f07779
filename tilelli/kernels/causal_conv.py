"""Depthwise causal 1-D convolution in the (B, T, C) layout as a small C kernel.

`causal_conv(x, w, history)` computes what `F.conv1d(groups=C)` over the left-padded,
transposed input computes (the reference path of `tilelli.model.pathways.conv.CausalConv`,
which dispatches here when `applicable`), without the transposes, copies and mkldnn set-up
that dominate that path at these sizes (k <= 21 taps, a few hundred channels): every loop of
the C code runs along the contiguous channels. The backward gives dx, dw (and the history's
gradient when asked), dw summed in a fixed order, so it is bit-identical from run to run
whatever the thread count.

Built on first use by `tilelli.kernels.build` (never at import); without a compiler it says so
once (a `tilelli: note:` line) and `available()` is False: callers then use PyTorch.
`TILELLI_NO_KERNEL=1` or `with kernel_disabled():` turns it off.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from tilelli.kernels.build import NativeLibrary, contiguous_rows, kernel_disabled

__all__ = ["applicable", "available", "causal_conv", "kernel_disabled", "library"]


class _Strides(ctypes.Structure):
    _fields_ = [("b", ctypes.c_int64), ("t", ctypes.c_int64)]


def _declare(lib: ctypes.CDLL) -> None:
    f, i64, s = ctypes.c_void_p, ctypes.c_int64, _Strides
    lib.causal_conv_forward.argtypes = [f] * 4 + [i64] * 4 + [s] * 3 + [ctypes.c_int]
    lib.causal_conv_forward.restype = ctypes.c_int
    lib.causal_conv_backward.argtypes = [f] * 7 + [i64] * 4 + [s] * 5 + [ctypes.c_int]
    lib.causal_conv_backward.restype = ctypes.c_int


library = NativeLibrary("causal_conv", Path(__file__).with_name("causal_conv.c"), _declare, "causal conv")


def available() -> bool:
    """True when the kernel is enabled and built (building it now if needed)."""
    return library.available()


def applicable(x: torch.Tensor, w: torch.Tensor, history: torch.Tensor | None = None) -> bool:
    """Whether `causal_conv` handles this call (and the kernel is available)."""
    tensors = (x, w) if history is None else (x, w, history)
    return (x.dim() == 3 and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and available())


def _strides(t: torch.Tensor | None) -> _Strides:
    return _Strides(*t.stride()[:2]) if t is not None else _Strides(0, 0)


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("the causal conv kernel could not allocate its scratch memory")


def _forward(x: torch.Tensor, w: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
    B, T, C = x.shape
    y = torch.empty(B, T, C)
    _check(library.get().causal_conv_forward(
        x.data_ptr(), _ptr(history), w.data_ptr(), y.data_ptr(), B, T, C, w.shape[-1],
        _strides(x), _strides(history), _strides(y), torch.get_num_threads()))
    return y


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, history):
        ctx.save_for_backward(x, w, history)
        return _forward(x, w, history)

    @staticmethod
    def backward(ctx, dy):
        x, w, history = ctx.saved_tensors
        need_x, need_w, need_h = ctx.needs_input_grad
        dy = contiguous_rows(dy)
        B, T, C = x.shape
        k = w.shape[-1]
        dx = torch.empty(B, T, C) if need_x else None
        dh = torch.empty(B, k - 1, C) if need_h else None
        dw = torch.empty(w.shape) if need_w else None
        _check(library.get().causal_conv_backward(
            x.data_ptr(), _ptr(history), w.data_ptr(), dy.data_ptr(), _ptr(dx), _ptr(dh), _ptr(dw),
            B, T, C, k, _strides(x), _strides(history), _strides(dy), _strides(dx), _strides(dh),
            torch.get_num_threads()))
        return dx, dw, dh


def causal_conv(x: torch.Tensor, w: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
    """x: (B, T, C), w: (C, 1, k) (F.conv1d's depthwise layout), history: (B, k-1, C) or None
    (zeros), float32 on the CPU -> y (B, T, C), y[b, t] = sum_j w[:, 0, j] * x[b, t - (k-1) + j],
    the rows before x taken from `history`. Call only where `applicable(...)`.
    """
    tensors = (x, w) if history is None else (x, w, history)
    if not (x.dim() == 3 and w.dim() == 3 and w.shape[:2] == (x.shape[2], 1)
            and (history is None or history.shape == (x.shape[0], w.shape[2] - 1, x.shape[2]))
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)):
        raise ValueError(f"causal_conv needs float32 CPU tensors x (B, T, C), w (C, 1, k), history (B, k-1, C) "
                         f"or None; got x {tuple(x.shape)} {x.dtype} {x.device}, w {tuple(w.shape)} {w.dtype}, "
                         f"history {None if history is None else tuple(history.shape)}; use F.conv1d instead")
    x, w = contiguous_rows(x), w.contiguous()
    if history is not None:
        history = contiguous_rows(history) if w.shape[2] > 1 else None  # k = 1: no history rows
    grads = x.requires_grad or w.requires_grad or (history is not None and history.requires_grad)
    if torch.is_grad_enabled() and grads:
        return _CausalConv.apply(x, w, history)
    return _forward(x, w, history)
