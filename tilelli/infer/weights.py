"""A checkpoint's tensors as the native engine holds them, read without torch.

Why not `safetensors.numpy`: numpy has no bfloat16, and our FP32 checkpoints ship in bf16. The
safetensors format is 8 bytes of header length, a JSON header and raw little-endian bytes, so
reading it with `np.frombuffer` over a memory map is a few lines and keeps bf16 as the raw
uint16 the engine widens in registers.

What each layer becomes (`EngineWeight`):
- ternary (quantized) layers: 2-bit codes in the engine's block layout (see engine.c), 2 bits
  per weight resident, plus their scales; from a packed file's trits (5 per byte) or, for an
  unpacked ternary checkpoint, quantized here exactly as `tilelli.model.ternary` does;
- FP32 layers: bfloat16 when the file stores bf16 (exact: that is what it holds), float32 when
  it stores float32 (exact too; nothing is rounded behind the user's back).
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilelli.errors import TilelliError
from tilelli.model.packing import unpack_trits
from tilelli.model.quantizer import absmean_scale, learned_scale, trits_of

BLOCK = 64  # weights per 2-bit block, BLOCK in engine.c
KIND_F32, KIND_BF16, KIND_T2 = 0, 1, 2
_DTYPES = {"F32": np.float32, "BF16": np.uint16, "U8": np.uint8, "I8": np.int8, "I64": np.int64,
           "I32": np.int32, "F16": np.float16}


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> read-only array over a memory map, metadata); BF16 tensors come as uint16."""
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise TilelliError(f"cannot read {path} ({e}); the checkpoint is incomplete, re-save it") from None
    try:
        n = int.from_bytes(buf[:8], "little")
        header = json.loads(bytes(buf[8:8 + n]))
        metadata = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, info in header.items():
            start, end = info["data_offsets"]
            dtype = _DTYPES[info["dtype"]]
            arr = np.frombuffer(buf, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize,
                                offset=8 + n + start)
            tensors[name] = arr.reshape(info["shape"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise TilelliError(f"{path} is truncated or corrupt ({e!r}); re-save or re-download the checkpoint") from None
    for name, target in json.loads(metadata.get("tilelli.aliases", "{}")).items():
        tensors[name] = tensors[target]
    return tensors, metadata


def as_float32(a: np.ndarray) -> np.ndarray:
    """float32 copy of a float32 or raw-bf16 (uint16) array."""
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def pack_2bit(trits: np.ndarray) -> np.ndarray:
    """(rows, cols) int8 trits -> (rows, ceil(cols / 64) * 8) uint16 in the engine's block layout:
    word l of a block holds the codes (trit + 1) of weights s * 8 + l in bits 2s, 2s + 1."""
    rows, cols = trits.shape
    nb = -(-cols // BLOCK)
    codes = np.ones((rows, nb * BLOCK), dtype=np.uint16)  # padding: code 1 = trit 0
    codes[:, :cols] = trits.astype(np.int16) + 1
    codes = codes.reshape(rows, nb, 8, 8)  # (row, block, s, lane)
    shifts = (2 * np.arange(8, dtype=np.uint16))[None, None, :, None]
    return np.bitwise_or.reduce(codes << shifts, axis=2).reshape(rows, nb * 8)


@dataclass
class EngineWeight:
    """One matrix as the engine reads it: kind, (rows, cols), data, scales (T2 only)."""

    kind: int
    rows: int
    cols: int
    data: np.ndarray
    scale: np.ndarray  # float32 (1,) or (rows,); unused for F32/BF16
    per_row: bool = False

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scale.nbytes if self.kind == KIND_T2 else 0)

    def dense(self) -> np.ndarray:
        """The float32 matrix (for small pieces like the conv kernel, and for tests)."""
        if self.kind != KIND_T2:
            return as_float32(self.data).reshape(self.rows, self.cols)
        nb = self.data.shape[1] // 8
        words = self.data.reshape(self.rows, nb, 1, 8)
        shifts = (2 * np.arange(8, dtype=np.uint16))[None, None, :, None]
        codes = ((words >> shifts) & 3).reshape(self.rows, nb * BLOCK)[:, :self.cols]
        trits = codes.astype(np.float32) - 1
        return trits * self.scale.reshape(-1, 1)


def ternary_weight(trits: np.ndarray, scale: np.ndarray) -> EngineWeight:
    rows, cols = trits.shape
    scale = np.ascontiguousarray(scale, dtype=np.float32).reshape(-1)
    return EngineWeight(KIND_T2, rows, cols, pack_2bit(trits), scale, per_row=scale.size > 1)


def quantized_weight(w2d: np.ndarray, scale: np.ndarray) -> EngineWeight:
    """The 2-bit engine weight of a latent (unpacked) ternary weight under `scale`: the trits the
    model's own quantizer (`tilelli.model.quantizer`) gives, so they match training exactly."""
    return ternary_weight(trits_of(w2d, scale).astype(np.int8), scale)


class CheckpointTensors:
    """Named weights of one checkpoint, each turned into what the engine holds."""

    def __init__(self, tensors: dict[str, np.ndarray], metadata: dict[str, str], packed: bool, quantize: bool,
                 per_row: bool, lsq: bool):
        self.tensors, self.packed, self.quantize, self.per_row, self.lsq = tensors, packed, quantize, per_row, lsq
        self.shapes = json.loads(metadata.get("tilelli.packed_shapes", "{}"))

    def vector(self, name: str) -> np.ndarray:
        """A float32 tensor (norms, biases, positions, router), whatever its stored dtype."""
        if name not in self.tensors:
            raise TilelliError(f"the checkpoint lacks tensor {name!r}; it does not match its config.json")
        return np.ascontiguousarray(as_float32(self.tensors[name]))

    def matrix(self, prefix: str, ternary: bool) -> EngineWeight:
        """The weight of the layer `prefix` viewed as 2-D (rows = outputs): 2-bit codes when the
        layer is quantized (`ternary`), else float32 / bf16 as stored."""
        t = self.tensors
        if ternary and self.packed and f"{prefix}.trits" in t:
            shape = self.shapes[prefix]
            rows, cols = shape[0], int(np.prod(shape[1:]))
            trits = unpack_trits(np.asarray(t[f"{prefix}.trits"]), rows * cols).reshape(rows, cols)
            return ternary_weight(trits, as_float32(t[f"{prefix}.scale"]))
        w = t.get(f"{prefix}.weight")
        if w is None:
            raise TilelliError(f"the checkpoint lacks the weight of {prefix!r}; it does not match its config.json")
        w2d = w.reshape(w.shape[0], -1)
        if ternary:
            w2d = as_float32(w2d)
            scale = (learned_scale(as_float32(t[f"{prefix}.scale"])).reshape(-1, 1) if self.lsq
                     else absmean_scale(w2d, self.per_row))
            return quantized_weight(w2d, scale)
        kind = KIND_BF16 if w2d.dtype == np.uint16 else KIND_F32
        data = np.ascontiguousarray(w2d if kind == KIND_BF16 else as_float32(w2d))
        return EngineWeight(kind, w2d.shape[0], w2d.shape[1], data, np.ones(1, np.float32))
