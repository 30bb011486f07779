"""Causal top-k attention as a small C kernel (forward and backward), built on first use.

`topk_attention(q, k, v, top_k, offset)` has the semantics of
`tilelli.pathways.attention.topk_causal_attention` (which dispatches here when `applicable`),
but never forms the (Tq, Tk) score matrix: each query scores its visible keys into a small
per-thread buffer, keeps the top_k, and saves their indices and softmax weights, so the
backward costs O(T * top_k * d) instead of O(T^2 * d). One difference: where several keys tie
at the k-th score the kernel keeps exactly top_k of them (the earliest), the PyTorch path keeps
all of them (with continuous inputs ties do not occur).

The C source is compiled with `cc` the first time the kernel is needed (never at import)
into `$TILELLI_CACHE/kernels` (default `~/.cache/tilelli/kernels`), under a name that hashes
the source, the flags and the CPU, and loaded with ctypes. Without a compiler, or if the
build fails, it warns once and `available()` is False: callers then use PyTorch.
`TILELLI_NO_KERNEL=1` or `with kernel_disabled():` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("topk_attention.c")
COMPILER = "cc"
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
MAX_TOP_K = 256  # MAX_TOP_K in the C source

_lib: ctypes.CDLL | None = None
_tried = False
_disabled = 0
_lock = threading.Lock()


class _Strides(ctypes.Structure):
    _fields_ = [("b", ctypes.c_int64), ("h", ctypes.c_int64), ("t", ctypes.c_int64)]


def cache_dir() -> Path:
    root = os.environ.get("TILELLI_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tilelli") / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def library_path() -> Path:
    """Where the build for this source, these flags and this kind of CPU lives."""
    key = "\0".join([SOURCE.read_text(), COMPILER, *FLAGS, platform.machine(), _cpu_flags()])
    return cache_dir() / f"topk_attention-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _build(path: Path) -> None:
    """Compile into a temporary file next to `path`, then rename: concurrent builds are safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([COMPILER, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else f"exit {proc.returncode}")
            raise RuntimeError(first.strip())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            _tried = True
            try:
                path = library_path()
                if not path.exists():
                    _build(path)
                lib = ctypes.CDLL(str(path))
                f, i64, s = ctypes.c_void_p, ctypes.c_int64, _Strides
                lib.topk_attention_forward.argtypes = [f] * 6 + [i64] * 7 + [s] * 4 + [ctypes.c_int]
                lib.topk_attention_forward.restype = None
                lib.topk_attention_backward.argtypes = [f] * 9 + [i64] * 7 + [s] * 7 + [ctypes.c_int]
                lib.topk_attention_backward.restype = None
                _lib = lib
            except FileNotFoundError:
                warnings.warn(f"no C compiler '{COMPILER}': top-k attention uses the PyTorch path", stacklevel=3)
            except (OSError, RuntimeError) as e:
                warnings.warn(f"top-k attention kernel unavailable ({e}); using the PyTorch path", stacklevel=3)
    return _lib


def _library() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("the top-k attention kernel could not be built; check available() first")
    return lib


def available() -> bool:
    """True when the kernel is enabled and built (building it now if needed)."""
    if _disabled or os.environ.get("TILELLI_NO_KERNEL", "") not in ("", "0"):
        return False
    return _load() is not None


@contextlib.contextmanager
def kernel_disabled() -> Iterator[None]:
    """Use the PyTorch path inside this block (the reference in tests and benchmarks)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def applicable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, offset: int) -> bool:
    """Whether `topk_attention` handles this call (and the kernel is available)."""
    return (0 < top_k < k.shape[2] and top_k <= MAX_TOP_K and k.shape[2] == offset + q.shape[2]
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (q, k, v))
            and available())


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its feature dimension is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


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
    _library().topk_attention_forward(
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
        dy = _rows(dy)
        B, H, Tq, dk = q.shape
        Tk, dv = v.shape[2], v.shape[3]
        dq = _empty_bthd(B, H, Tq, dk)
        dk_ = _empty_bthd(B, H, Tk, dk)
        dv_ = _empty_bthd(B, H, Tk, dv)
        _library().topk_attention_backward(
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
    q, k, v = _rows(q), _rows(k), _rows(v)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _TopKAttention.apply(q, k, v, top_k, offset)
    return _forward(q, k, v, top_k, offset, save=False)[0]
