"""A checkpoint's tensors as the native engine holds them, read without torch.

The file is read by `tilelli.model.checkpoint_files.read_weights` (numpy over a memory map, every
entry checked against the file; bf16 stays the raw uint16 the engine widens in registers), and
every tensor the engine takes is checked here against the shape the model config gives it, so
the C code never trusts a config or a file: a config that claims 4,096 positions over a table of
1,024 is an error here, not a read past the table.

What each layer becomes (`EngineWeight`):
- ternary (quantized) layers: 2-bit codes in the engine's block layout (see engine.c), 2 bits
  per weight resident, plus their scales; from a packed file's trits (5 per byte) or, for an
  unpacked ternary checkpoint, quantized here exactly as `tilelli.model.ternary` does;
- FP32 layers: bfloat16 when the file stores bf16 (exact: that is what it holds), float32 when
  it stores float32 (exact too; nothing is rounded behind the user's back).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from tilelli.errors import TilelliError, shown
from tilelli.model.checkpoint_files import WEIGHTS_FILE, checkpoint_dir, model_config, read_config, read_weights
from tilelli.model.config import ModelConfig
from tilelli.model.packing import packed_size, unpack_trits
from tilelli.model.quantizer import absmean_scale, learned_scale, trits_of

BLOCK = 64  # weights per 2-bit block, BLOCK in engine.c
KIND_F32, KIND_BF16, KIND_T2 = 0, 1, 2
# a tl_layer's fields in engine.c's order: float vectors (NULL when absent), then matrices
LAYER_VECTORS = ("norm1_w", "norm1_b", "norm2_w", "norm2_b", "router_w", "router_b", "conv_w")
LAYER_MATRICES = ("qkv", "proj", "up", "down")


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


_FLOATS = (np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.float16))  # uint16 = raw bf16


def _mismatch(what: str) -> TilelliError:
    return TilelliError(f"{what}; config.json does not belong to these weights (was it edited or copied from "
                        "another run?), re-save the checkpoint")


class CheckpointTensors:
    """Named weights of one checkpoint, each checked against the shape the engine will use
    (the model config's) and turned into what the engine holds."""

    def __init__(self, tensors: dict[str, np.ndarray], metadata: dict[str, str], packed: bool, quantize: bool,
                 per_row: bool, lsq: bool):
        self.tensors, self.packed, self.quantize, self.per_row, self.lsq = tensors, packed, quantize, per_row, lsq
        try:
            shapes = json.loads(metadata.get("tilelli.packed_shapes", "{}"))
        except (json.JSONDecodeError, RecursionError):
            shapes = None
        if not isinstance(shapes, dict):
            raise TilelliError("the checkpoint's tilelli.packed_shapes metadata is not a JSON object; re-save it")
        self.shapes = shapes

    def _floats(self, name: str) -> np.ndarray:
        a = self.tensors.get(name)
        if a is None:
            raise _mismatch(f"the weights lack tensor {shown(name)}")
        if a.dtype not in _FLOATS:
            raise _mismatch(f"tensor {shown(name)} holds {a.dtype} values, not floating-point weights")
        return a

    def _scale(self, name: str, rows: int) -> np.ndarray:
        scale = self._floats(name)
        if scale.size not in (1, rows):
            raise _mismatch(f"tensor {shown(name)} has {scale.size} scales for {rows} rows")
        return as_float32(scale).reshape(-1)

    def vector(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 tensor of exactly `shape` (norms, biases, positions, router), whatever its stored dtype."""
        a = self._floats(name)
        if a.shape != shape:
            raise _mismatch(f"tensor {shown(name)} has shape {a.shape} but the model config needs {shape}")
        return np.ascontiguousarray(as_float32(a))

    def matrix(self, prefix: str, ternary: bool, rows: int, cols: int) -> EngineWeight:
        """The weight of the layer `prefix` viewed as (rows, cols) (rows = outputs; the model
        config's shape, checked): 2-bit codes when the layer is quantized (`ternary`), else
        float32 / bf16 as stored."""
        t = self.tensors
        name = f"{prefix}.trits"
        if ternary and self.packed and name in t:
            shape = self.shapes.get(prefix)
            ok = isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)
            if not ok or (shape[0], math.prod(shape[1:])) != (rows, cols):
                raise _mismatch(f"{shown(name)} holds a weight of shape {shown(shape, 40)} but the model config "
                                f"needs {rows} x {cols}")
            trits = t[name]
            if trits.dtype != np.uint8 or trits.size != packed_size(rows * cols):
                raise _mismatch(f"{shown(name)} has {trits.size} {trits.dtype} values, a {rows} x {cols} weight "
                                f"needs {packed_size(rows * cols)} bytes")
            try:
                codes = unpack_trits(np.asarray(trits), rows * cols).reshape(rows, cols)
            except ValueError as e:
                raise TilelliError(f"the checkpoint's {shown(name)} is damaged ({e}); re-save or re-download "
                                   "the checkpoint") from None
            return ternary_weight(codes, self._scale(f"{prefix}.scale", rows))
        w = self._floats(f"{prefix}.weight")
        if w.ndim < 2 or (w.shape[0], math.prod(w.shape[1:])) != (rows, cols):
            raise _mismatch(f"tensor {shown(prefix + '.weight')} has shape {w.shape} but the model config needs "
                            f"{rows} x {cols}")
        w2d = w.reshape(rows, cols)
        if ternary:
            w2d = as_float32(w2d)
            scale = (learned_scale(self._scale(f"{prefix}.scale", rows)).reshape(-1, 1) if self.lsq
                     else absmean_scale(w2d, self.per_row))
            return quantized_weight(w2d, scale)
        kind = KIND_BF16 if w2d.dtype == np.uint16 else KIND_F32
        data = np.ascontiguousarray(w2d if kind == KIND_BF16 else as_float32(w2d))
        return EngineWeight(kind, rows, cols, data, np.ones(1, np.float32))


@dataclass
class EngineLayer:
    """One block's tensors, named as engine.c's tl_layer fields (None: the architecture has none)."""

    qkv: EngineWeight
    proj: EngineWeight
    up: EngineWeight
    down: EngineWeight
    norm1_w: np.ndarray
    norm1_b: np.ndarray
    norm2_w: np.ndarray | None = None  # vanilla: ln2
    norm2_b: np.ndarray | None = None
    router_w: np.ndarray | None = None  # lite: (3, d), (3,)
    router_b: np.ndarray | None = None
    conv_w: np.ndarray | None = None  # lite: (d, kernel) effective weights


@dataclass
class EngineTensors:
    """Every tensor of a model as engine.c's tl_model takes it: what `NativeModel` points the
    C structs at and what `tilelli.infer.model_file` writes, so the two cannot disagree."""

    tok: EngineWeight
    head: EngineWeight
    pos: np.ndarray
    normf_w: np.ndarray
    normf_b: np.ndarray
    layers: list[EngineLayer]


def engine_tensors(config: ModelConfig, weights: CheckpointTensors) -> EngineTensors:
    """The tensors of a Lite or vanilla `config` (a ModelConfig), each checked against the shape
    the engine will use."""
    q = config.ternary.quantize
    qkv_q = q and not config.ternary.fp_attention
    d, hidden, vocab = config.d_model, config.expand * config.d_model, config.vocab_size
    layers = []
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        if config.arch == "lite":
            attn, mlp, norms = p + "paths.sparse.0.", p + "paths.dense.0.", ["norm"]
            conv = weights.matrix(p + "paths.local.0", q, d, config.local_kernel).dense()  # tiny: floats
            extra = dict(router_w=weights.vector(p + "router.weight", (3, d)),
                         router_b=weights.vector(p + "router.bias", (3,)),
                         conv_w=np.ascontiguousarray(conv, dtype=np.float32))
        else:
            attn, mlp, norms, extra = p + "attn.", p + "mlp.", ["ln1", "ln2"], {}
        for j, norm in enumerate(norms):
            extra[f"norm{j + 1}_w"] = weights.vector(p + norm + ".weight", (d,))
            extra[f"norm{j + 1}_b"] = weights.vector(p + norm + ".bias", (d,))
        layers.append(EngineLayer(qkv=weights.matrix(attn + "qkv", qkv_q, 3 * d, d),
                                  proj=weights.matrix(attn + "proj", q, d, d),
                                  up=weights.matrix(mlp + "up", q, hidden, d),
                                  down=weights.matrix(mlp + "down", q, d, hidden), **extra))
    return EngineTensors(weights.matrix("tok_emb", q, vocab, d), weights.matrix("head", q, vocab, d),
                         weights.vector("pos_emb", (config.max_seq_len, d)),
                         weights.vector("norm_f.weight", (d,)), weights.vector("norm_f.bias", (d,)), layers)


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, CheckpointTensors]:
    """The model config and checked tensors of the checkpoint (or run directory) at `path`."""
    ckpt = checkpoint_dir(path)
    meta, config = read_config(ckpt), model_config(ckpt)
    tensors, metadata = read_weights(ckpt / WEIGHTS_FILE)
    t = config.ternary
    return config, CheckpointTensors(tensors, metadata, meta["packed"], t.quantize, t.per_row, t.lsq)
