"""The native engine (engine.c) from Python: load a checkpoint without torch, run forward steps.

    model = NativeModel.load("checkpoints/tilelli-lite-ternary")
    seqs = [model.new_sequence(), model.new_sequence()]
    logits = model.forward(seqs, [b"Once upon", b"Tom"])   # (2, 256): each prompt's last byte
    logits = model.forward(seqs, [b" a", b"!"])            # one more byte each, same call

Each `Sequence` owns its KV caches, conv buffers and position, so sequences of any lengths
share one call (the server batches through it). Ternary layers stay 2-bit codes in memory.

Why a C engine: a 10 M model's decode step is ~50 small matrix-vector products; through the
PyTorch module tree each costs a Python call and an allocation, and its FP32 weights (40 MB)
stream from memory every byte. Here one call does the whole step on 2-bit weights that stay in
cache. It is built on first use like the other kernels (`tilelli.kernels.build`); where it
cannot be built, `tilelli.infer.load_decoder` falls back to the PyTorch path and says so once.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from tilelli.errors import TilelliError
from tilelli.infer.weights import (
    KIND_T2,
    LAYER_MATRICES,
    LAYER_VECTORS,
    CheckpointTensors,
    EngineWeight,
    engine_tensors,
    read_checkpoint,
)
from tilelli.kernels.build import MAX_TOP_K, NativeLibrary
from tilelli.limits import check_threads
from tilelli.model.config import ModelConfig

_FAILURES = {1: "out of memory", 2: "a byte outside the vocabulary", 3: "a sequence past its context"}  # tl_forward
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


class _Weight(ctypes.Structure):
    _fields_ = [("kind", _i64), ("rows", _i64), ("cols", _i64), ("data", _ptr), ("scale", _ptr),
                ("per_row", _i64)]


class _Layer(ctypes.Structure):
    _fields_ = [(n, _ptr) for n in LAYER_VECTORS] + [(n, _Weight) for n in LAYER_MATRICES]


class _Model(ctypes.Structure):
    _fields_ = [(n, _i64) for n in ("arch", "d", "n_layers", "vocab", "max_seq", "n_heads", "d_head", "top_k",
                                     "kernel", "hidden")]
    _fields_ += [("tok", _Weight), ("head", _Weight), ("pos", _ptr), ("normf_w", _ptr), ("normf_b", _ptr),
                 ("layers", ctypes.POINTER(_Layer)), ("int8", _i64)]


class _Seq(ctypes.Structure):
    _fields_ = [("k", _ptr), ("v", _ptr), ("conv", _ptr), ("max_len", _i64), ("pos", _i64)]


def _declare(lib: ctypes.CDLL) -> None:
    lib.tl_workspace_floats.argtypes = [ctypes.POINTER(_Model), _i64, _i64]
    lib.tl_workspace_floats.restype = _i64
    lib.tl_forward.argtypes = [ctypes.POINTER(_Model), _i64, ctypes.POINTER(ctypes.POINTER(_Seq)), _ptr, _ptr, _ptr,
                               ctypes.c_int, _ptr, ctypes.c_int]
    lib.tl_forward.restype = ctypes.c_int
    lib.tl_check_model.argtypes = [ctypes.POINTER(_Model)]
    lib.tl_check_model.restype = ctypes.c_int
    lib.tl_key_stride.argtypes = [_i64]
    lib.tl_key_stride.restype = _i64


library = NativeLibrary("engine", Path(__file__).with_name("engine.c"), _declare, "inference engine")


def unsupported(config: ModelConfig) -> str | None:
    """Why the engine cannot run `config` (None when it can): the shipped kinds are Lite and vanilla."""
    if config.arch == "parent":
        return "the parent block (5 pathways, banks, skipping) runs on the PyTorch path"
    if config.n_heads * config.head_dim != config.d_model:
        return "attention heads that do not tile d_model run on the PyTorch path"
    if config.ternary.quantize and config.ternary.hadamard:
        return "Hadamard-rotated ternary layers run on the PyTorch path"
    if config.top_k > MAX_TOP_K:
        return f"top_k above {MAX_TOP_K} runs on the PyTorch path"
    if config.arch == "lite" and (config.n_banks != 1 or config.top_k_routing or config.skip_threshold > 0):
        return "banks, top-k routing and skipping run on the PyTorch path"
    return None


def auto_threads() -> int:
    """Threads for the engine: the CPUs not already busy by the 1-minute load average, at least one.

    Why not simply all CPUs: the engine synchronises its threads ~100 times per byte, and
    when another process (a training run, say) holds a core, every synchronisation waits for
    a descheduled thread. Measured here with two training runs on 2 cores: 100 bytes took 34 s
    on 2 threads and 0.7 s on 1."""
    cpus = len(os.sched_getaffinity(0))
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cpus, round(cpus - busy)))


def _addr(a: np.ndarray) -> int:
    return a.ctypes.data


class Sequence:
    """One sequence's caches and position (bytes consumed so far): the one inference state of
    the native path. Keys are stored transposed in blocks of positions (layout in engine.c;
    `tl_key_stride(max_len)` positions per head), values as (layers, heads, max_len, d_head)
    rows, and the last kernel-1 normalised inputs of every conv."""

    def __init__(self, config: ModelConfig, max_len: int, key_stride: int):
        L, H, dh, d = config.n_layers, config.n_heads, config.head_dim, config.d_model
        self.k = np.zeros((L, H, dh, key_stride), dtype=np.float32)
        self.v = np.zeros((L, H, max_len, dh), dtype=np.float32)
        self.conv = np.zeros((L, max(config.local_kernel - 1, 1), d), dtype=np.float32)
        self.c = _Seq(_addr(self.k), _addr(self.v), _addr(self.conv), max_len, 0)

    @property
    def pos(self) -> int:
        return int(self.c.pos)

    @property
    def max_len(self) -> int:
        return int(self.c.max_len)


class NativeModel:
    """A Lite or vanilla model held by the native engine (see module doc)."""

    def __init__(self, config: ModelConfig, weights: CheckpointTensors, threads: int = 0,
                 lib: NativeLibrary | None = None, int8: bool = False):
        why = unsupported(config)
        if why:
            raise TilelliError(f"the native engine cannot run this model: {why}")
        self.config = config
        self.max_seq_len = config.max_seq_len
        self.threads = check_threads(threads) or auto_threads()
        self._lib = (lib or library).get()
        self._keep: list[np.ndarray] = []  # every array the C structs point into
        t = engine_tensors(config, weights)
        layers = (_Layer * config.n_layers)()
        self.weights: list[EngineWeight] = []
        for ly, src in zip(layers, t.layers, strict=True):
            for name in LAYER_VECTORS:
                a = getattr(src, name)
                if a is not None:
                    setattr(ly, name, self._hold(a))
            for name in LAYER_MATRICES:
                setattr(ly, name, self._weight(getattr(src, name)))
        self._layers = layers
        self._model = _Model(0 if config.arch == "lite" else 1, config.d_model, config.n_layers, config.vocab_size,
                             config.max_seq_len, config.n_heads, config.head_dim, config.top_k, config.local_kernel,
                             config.expand * config.d_model, self._weight(t.tok), self._weight(t.head),
                             self._hold(t.pos), self._hold(t.normf_w), self._hold(t.normf_b), layers, int(int8))
        failed = self._lib.tl_check_model(ctypes.byref(self._model))
        if failed:  # the Python checks above should make this unreachable; the C code checks anyway
            raise TilelliError(f"the native engine refused this model's shapes (check {failed}); re-save the "
                               "checkpoint")
        self._work = np.zeros(0, dtype=np.float32)

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int = 0, lib: NativeLibrary | None = None,
             int8: bool = False) -> NativeModel:
        """The checkpoint (or run directory) at `path`, read without torch; `lib`: another build
        of engine.c (tests build it for smaller instruction sets); `int8`: the integer path."""
        return cls(*read_checkpoint(path), threads, lib, int8)

    # -- building the C structs -----------------------------------------------------------

    def _hold(self, a: np.ndarray) -> int:
        a = np.require(a, requirements="CA")  # C-contiguous and aligned: a file's bytes may be neither
        self._keep.append(a)
        return _addr(a)

    def _weight(self, w: EngineWeight) -> _Weight:
        self.weights.append(w)
        return _Weight(w.kind, w.rows, w.cols, self._hold(w.data), self._hold(w.scale), int(w.per_row))

    # -- running ------------------------------------------------------------------------

    @property
    def int8(self) -> bool:
        """The integer path: ternary layers take int8 inputs (engine.c, top); settable between calls."""
        return bool(self._model.int8)

    @int8.setter
    def int8(self, on: bool) -> None:
        self._model.int8 = int(on)

    @property
    def ternary(self) -> bool:
        """Whether any layer is ternary (so that the integer path changes anything)."""
        return any(w.kind == KIND_T2 for w in self.weights)

    @property
    def resident_bytes(self) -> int:
        """Bytes of every weight the engine holds (2-bit codes, bf16/f32 matrices, vectors)."""
        return sum(a.nbytes for a in self._keep)

    @property
    def bits_per_ternary_weight(self) -> float | None:
        """Resident bits per weight of the 2-bit layers (codes + scales, with block padding)."""
        t2 = [w for w in self.weights if w.kind == KIND_T2]
        if not t2:
            return None
        return 8 * sum(w.nbytes for w in t2) / sum(w.rows * w.cols for w in t2)

    def new_sequence(self, max_len: int | None = None) -> Sequence:
        max_len = max_len or self.max_seq_len
        if not 1 <= max_len <= self.max_seq_len:
            raise TilelliError(f"a sequence of {max_len} positions does not fit the model's context "
                               f"of {self.max_seq_len}")
        return Sequence(self.config, max_len, self._lib.tl_key_stride(max_len))

    def forward(self, seqs: list[Sequence], chunks: list[bytes], all_logits: bool = False) -> np.ndarray:
        """Feed chunks[i] (>= 1 byte) to seqs[i], all in one call; returns float32 logits
        (len(seqs), vocab) of each chunk's last byte, or (total bytes, vocab) with `all_logits`."""
        if len(seqs) != len(chunks) or not seqs:
            raise ValueError("forward needs one chunk of bytes per sequence, and at least one sequence")
        if len({id(s) for s in seqs}) != len(seqs):
            raise ValueError("a sequence appears twice in one forward call")
        for s, c in zip(seqs, chunks, strict=True):
            if not c:
                raise ValueError("every chunk needs at least one byte")
            if s.pos + len(c) > s.max_len:
                raise TilelliError(f"sequence of {s.pos + len(c)} bytes exceeds the context of {s.max_len}; "
                                   "use a shorter input")
        tokens = np.frombuffer(b"".join(bytes(c) for c in chunks), dtype=np.uint8).astype(np.int32)
        counts = np.array([len(c) for c in chunks], dtype=np.int64)
        n = int(counts.sum())
        need = self._lib.tl_workspace_floats(ctypes.byref(self._model), n, self.threads)
        if self._work.size < need:
            self._work = np.zeros(need, dtype=np.float32)
        logits = np.empty((n if all_logits else len(seqs), self.config.vocab_size), dtype=np.float32)
        ptrs = (ctypes.POINTER(_Seq) * len(seqs))(*[ctypes.pointer(s.c) for s in seqs])
        failed = self._lib.tl_forward(ctypes.byref(self._model), len(seqs), ptrs, _addr(tokens), _addr(counts),
                                      _addr(logits), int(all_logits), _addr(self._work), self.threads)
        if failed:  # out of memory, or inputs the checks above let through (a bug): never half-written logits
            raise TilelliError(f"the native engine could not run this step ({_FAILURES.get(failed, failed)})")
        return logits
