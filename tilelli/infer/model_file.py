"""The single-file model (`model.tlm`) that the standalone runner and the browser read.

Why a format of its own: the runner and the WebAssembly module have no Python, numpy or
safetensors reader, and should not convert anything at load time. So the file holds the model
exactly as the native engine holds it (`tilelli.infer.weights.engine_tensors`: 2-bit codes in
the engine's block layout, bf16 or f32 matrices, f32 vectors), plus what a chat needs (template,
abstain thresholds, sampling defaults). The layout is described, and every field checked, by the
C loader (tilelli/infer/model_file.c): a magic and a version (llama2.c's lesson), the config, a
table with each tensor's kind, shape, offset and length, then the data at 64-byte offsets.
A rule with a refusal detector (`tilelli.chat.detector`) stores its 2V+2 weights in float64, as
`abstain.json` holds them, so the C score is Python's: version 2 added them (and its header says
where they are); a version 1 file is refused, as any other, with the version it has.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tilelli.errors import TilelliError
from tilelli.infer.generate import TEXT_SAMPLING, SamplingConfig
from tilelli.infer.weights import KIND_F32, KIND_T2, LAYER_MATRICES, LAYER_VECTORS, EngineTensors, EngineWeight
from tilelli.model.checkpoint_files import is_chat_checkpoint
from tilelli.model.config import ModelConfig

if TYPE_CHECKING:
    from tilelli.chat.detector import Detector

MODEL_FILE = "model.tlm"  # its name in an export
MAGIC, VERSION = b"TLLM", 2
ALIGN = 64
# magic, version, config, chat/has_rule/max_new, thresholds + sampling, n tensors, then the detector:
# its number of weights (0: none, else 2V+2), their offset (float64, 64-byte aligned) and its bias
HEADER = struct.Struct("<4sI10q3q4dq2qd")
ENTRY = struct.Struct("<8q")  # kind, rows, cols, per_row, data offset, data bytes, scale offset, scale count
assert HEADER.size == 176 and ENTRY.size == 64  # TLM_HEADER, TLM_ENTRY in model_file.c


@dataclass(frozen=True)
class ChatSettings:
    """What a front end needs besides the weights: whether the model chats, its abstain rule's
    thresholds (None: no rule, the model's own reply decides) and refusal detector (None: the
    rule thresholds P(refusal)), and its sampling defaults."""

    chat: bool
    sampling: SamplingConfig
    refusal_threshold: float | None = None
    surprise_threshold: float = math.inf
    detector: Detector | None = None


def settings_of(checkpoint: Path) -> ChatSettings:
    """A checkpoint's settings: a chat model's template, abstain rule (abstain.json, when it has
    one) and `tilelli chat`'s defaults, or a text model's `tilelli generate` defaults."""
    from tilelli.chat.abstain import AbstainRule
    from tilelli.chat.defaults import CHAT_SAMPLING

    if not is_chat_checkpoint(checkpoint):
        return ChatSettings(False, TEXT_SAMPLING)
    rule = AbstainRule.load(checkpoint)
    if rule is None:
        return ChatSettings(True, CHAT_SAMPLING)
    return ChatSettings(True, CHAT_SAMPLING, rule.refusal_threshold, rule.surprise_threshold, rule.detector)


def _tensor(a: EngineWeight | np.ndarray | None) -> tuple[int, int, int, int, np.ndarray, np.ndarray | None]:
    """(kind, rows, cols, per_row, data, scales) of one table slot; a vector is (rows, cols) f32."""
    if a is None:
        return KIND_F32, 0, 0, 0, np.zeros(0, np.float32), None
    if isinstance(a, EngineWeight):
        return a.kind, a.rows, a.cols, int(a.per_row), a.data, a.scale if a.kind == KIND_T2 else None
    rows, cols = (1, a.shape[0]) if a.ndim == 1 else a.shape
    return KIND_F32, rows, cols, 0, a, None


def _slots(t: EngineTensors) -> list:
    """The tensors in the table's order (model_file.c reads them in this order)."""
    out: list = [t.tok, t.head, t.pos, t.normf_w, t.normf_b]
    for layer in t.layers:
        out += [getattr(layer, n) for n in (*LAYER_VECTORS, *LAYER_MATRICES)]
    return out


def write_model_file(path: Path, config: ModelConfig, tensors: EngineTensors, settings: ChatSettings) -> int:
    """Write `path`; returns its size in bytes."""
    slots = [_tensor(a) for a in _slots(tensors)]
    table_end = HEADER.size + ENTRY.size * len(slots)
    at = -(-table_end // ALIGN) * ALIGN
    entries, blobs = [], []
    det, det_at = settings.detector, 0
    if det is not None:
        if len(det.weights) != 2 * config.vocab_size + 2:
            raise TilelliError(f"the abstain rule's detector has {len(det.weights)} weights; a model of "
                               f"{config.vocab_size} bytes reads {2 * config.vocab_size + 2}")
        blobs.append((at, np.asarray(det.weights, dtype="<f8").tobytes()))
        det_at, at = at, -(-(at + len(blobs[-1][1])) // ALIGN) * ALIGN
    for kind, rows, cols, per_row, data, scale in slots:
        blobs.append((at, np.ascontiguousarray(data).tobytes()))
        data_at, at = at, -(-(at + len(blobs[-1][1])) // ALIGN) * ALIGN
        scale_at, count = 0, 0
        if scale is not None:
            blobs.append((at, np.ascontiguousarray(scale, dtype="<f4").tobytes()))
            scale_at, count, at = at, scale.size, -(-(at + 4 * scale.size) // ALIGN) * ALIGN
        entries.append(ENTRY.pack(kind, rows, cols, per_row, data_at, len(blobs[-1 - (scale is not None)][1]),
                                  scale_at, count))
    s, rule = settings.sampling, settings.refusal_threshold is not None
    header = HEADER.pack(MAGIC, VERSION, 0 if config.arch == "lite" else 1, config.d_model, config.n_layers,
                         config.vocab_size, config.max_seq_len, config.n_heads, config.head_dim, config.top_k,
                         config.local_kernel, config.expand * config.d_model, int(settings.chat), int(rule),
                         s.max_new_tokens, settings.refusal_threshold if rule else 1.0, settings.surprise_threshold,
                         s.temperature, s.top_p, len(slots), 0 if det is None else len(det.weights), det_at,
                         0.0 if det is None else det.bias)
    with open(path, "wb") as f:
        f.write(header + b"".join(entries))
        for offset, blob in blobs:
            f.write(bytes(offset - f.tell()))
            f.write(blob)
        return f.tell()
