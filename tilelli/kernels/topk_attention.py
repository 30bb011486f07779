"""Causal top-k attention as a small C kernel (forward and backward), built on first use.

`topk_attention(q, k, v, top_k, offset)` has the semantics of
`tilelli.model.pathways.attention.topk_causal_attention` (which dispatches here when `applicable`),
but never forms the (Tq, Tk) score matrix: each query scores its visible keys into a small
per-thread buffer, keeps the top_k, and saves their indices and softmax weights, so the
backward costs O(T * top_k * d) instead of O(T^2 * d). Where keys tie at the k-th score it
keeps exactly top_k, the earliest, as the PyTorch path and the inference engine do.

Built on first use by `tilelli.kernels.build` (never at import); without a compiler it says so
once (a `tilelli: note:` line) and `available()` is False: callers then use PyTorch.
`TILELLI_NO_KERNEL=1` or `with kernel_disabled():` turns it off.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from tilelli.kernels.build import MAX_TOP_K, NativeLibrary, contiguous_rows, kernel_disabled

__all__ = ["MAX_TOP_K", "applicable", "available", "kernel_disabled", "library", "topk_attention"]


class _Strides(ctypes.Structure):
    _fields_ = [("b", ctypes.c_int64), ("h", ctypes.c_int64), ("t", ctypes.c_int64)]


def _declare(lib: ctypes.CDLL) -> None:
    f, i64, s = ctypes.c_void_p, ctypes.c_int64, _Strides
    lib.topk_attention_forward.argtypes = [f] * 6 + [i64] * 7 + [s] * 4 + [ctypes.c_int]
    lib.topk_attention_forward.restype = None
    lib.topk_attention_backward.argtypes = [f] * 9 + [i64] * 7 + [s] * 7 + [ctypes.c_int]
    lib.topk_attention_backward.restype = None


library = NativeLibrary("topk_attention", Path(__file__).with_name("topk_attention.c"), _declare, "top-k attention")


def available() -> bool:
    """True when the kernel is enabled and built (building it now if needed)."""
    return library.available()


def applicable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, offset: int) -> bool:
    """Whether `topk_attention` handles this call (and the kernel is available)."""
    return (0 < top_k < k.shape[2] and top_k <= MAX_TOP_K and k.shape[2] == offset + q.shape[2]
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (q, k, v))
            and available())


def _strides(t: torch.Tensor) -> _Strides:
    return _Strides(*t.stride()[:3])


def _empty_bthd(B: int, H: int, T: int, d: int) -> torch.Tensor:
    """(B, H, T, d) laid out as (B, T, H, d): the caller's transpose(1, 2).reshape is free."""
    return torch.empty(B, T, H, d).transpose(1, 2)


def _forward(q, k, v, top_k: int, offset: int, save: bool):
    B, H, Tq, dk = q.shape
    dv = v.shape[-1]
    y = _empty_bthd(B, H, Tq, dv)
    idx = torch.empty(B * H, Tq, top_k, dtype=torch.int32) if save else None
    p = torch.empty(B * H, Tq, top_k) if save else None
    library.get().topk_attention_forward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(),
        idx.data_ptr() if save else None, p.data_ptr() if save else None,
        B, H, Tq, dk, dv, top_k, offset, _strides(q), _strides(k), _strides(v), _strides(y),
        torch.get_num_threads())
    return y, idx, p


class _TopKAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, top_k: int, offset: int):
        y, idx, p = _forward(q, k, v, top_k, offset, save=True)
        ctx.save_for_backward(q, k, v, idx, p)
        ctx.top_k = top_k
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, idx, p = ctx.saved_tensors
        dy = contiguous_rows(dy)
        B, H, Tq, dk = q.shape
        Tk, dv = v.shape[2], v.shape[3]
        dq = _empty_bthd(B, H, Tq, dk)
        dk_ = _empty_bthd(B, H, Tk, dk)
        dv_ = _empty_bthd(B, H, Tk, dv)
        library.get().topk_attention_backward(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), dy.data_ptr(), idx.data_ptr(), p.data_ptr(),
            dq.data_ptr(), dk_.data_ptr(), dv_.data_ptr(), B, H, Tq, Tk, dk, dv, ctx.top_k,
            _strides(q), _strides(k), _strides(v), _strides(dy), _strides(dq), _strides(dk_), _strides(dv_),
            torch.get_num_threads())
        return dq, dk_, dv_, None, None


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, offset: int = 0) -> torch.Tensor:
    """q, k: (B, H, Tq|Tk, dk); v: (B, H, Tk, dv), Tk = offset + Tq, float32 on the CPU -> (B, H, Tq, dv).

    Query i sits at position offset + i and attends to its top_k highest-scoring keys among
    0..offset+i (all of them while fewer are visible). Call only where `applicable(...)`.
    """
    if not (0 < top_k <= MAX_TOP_K and k.shape[2] == v.shape[2] == offset + q.shape[2]
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4 for t in (q, k, v))):
        raise ValueError(f"topk_attention needs 4-d float32 CPU tensors with Tk = offset + Tq and "
                         f"0 < top_k <= {MAX_TOP_K}; got q {tuple(q.shape)} {q.dtype} {q.device}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, top_k={top_k}, offset={offset}; use topk_causal_attention instead")
    q, k, v = contiguous_rows(q), contiguous_rows(k), contiguous_rows(v)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _TopKAttention.apply(q, k, v, top_k, offset)
    return _forward(q, k, v, top_k, offset, save=False)[0]
