"""The byte-level language model: one shell for every architecture.

    bytes (B, T) -> ternary-capable byte embedding + learned FP32 positions
                 -> n_layers blocks (Lite, parent or vanilla)
                 -> final LayerNorm -> ternary-capable unembedding (not tied) -> logits (B, T, 256)

Loss = next-byte cross-entropy (nats/byte) + the blocks' auxiliary load-balance losses.
For generation the model owns one `InferenceState`: every layer's pathway caches and the
number of positions consumed; `forward(idx, state=state)` continues from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tilelli.errors import TilelliError
from tilelli.model.blocks import make_block, residual_dropout, router_entropy
from tilelli.model.config import ModelConfig
from tilelli.model.ternary import TernaryEmbedding, TernaryLinear, TernaryModule


@dataclass
class InferenceState:
    """Every layer's caches plus the one count of positions consumed, `pos`: the caches keep
    none of their own, every pathway is told where its input starts."""

    caches: list[Any]
    max_len: int
    pos: int = 0


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None  # ce_loss + aux_loss, what training minimises
    ce_loss: torch.Tensor | None = None  # nats per byte
    aux_loss: torch.Tensor | None = None
    router_probs: list[torch.Tensor] = field(default_factory=list)  # per routed layer (B, T, P)

    def router_entropy(self) -> torch.Tensor:
        """Per-layer, per-token router entropy (L, B, T) in nats (empty for vanilla)."""
        if not self.router_probs:
            return self.logits.new_zeros(0)
        return torch.stack([router_entropy(p) for p in self.router_probs])


class LM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = TernaryEmbedding(config.vocab_size, d, config.ternary, std=1.0 / math.sqrt(d))
        self.pos_emb = nn.Parameter(torch.randn(config.max_seq_len, d) * 0.02)
        self.drop = residual_dropout(config)
        self.blocks = nn.ModuleList([make_block(config) for _ in range(config.n_layers)])
        self.norm_f = nn.LayerNorm(d)
        self.head = TernaryLinear(d, config.vocab_size, config.ternary)

    def num_params(self) -> int:
        """Parameters as trained (latent weights; a packed model counts its trits, and its
        scales where they were learned (LSQ), so the count survives a packed round trip)."""
        n = sum(p.numel() for p in self.parameters())
        for m in self.modules():
            if isinstance(m, TernaryModule) and "packed_trits" in m._buffers:
                n += m.packed_trits.numel() + (m.packed_scale.numel() if m.opts.lsq else 0)
        return n

    @property
    def device(self) -> torch.device:
        return self.pos_emb.device

    def init_state(self, batch_size: int = 1, max_len: int | None = None) -> InferenceState:
        max_len = max_len or self.config.max_seq_len
        caches = [b.init_cache(batch_size, max_len, self.device) for b in self.blocks]
        return InferenceState(caches, max_len)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                state: InferenceState | None = None) -> LMOutput:
        B, T = idx.shape
        start = state.pos if state is not None else 0
        limit = state.max_len if state is not None else self.config.max_seq_len
        if start + T > limit:
            raise TilelliError(f"sequence of {start + T} bytes exceeds the context of {limit}; "
                               "use a shorter input")
        x = self.drop(self.tok_emb(idx) + self.pos_emb[start:start + T])  # (B, T, C)
        aux = x.new_zeros(())
        router_probs = []
        for i, block in enumerate(self.blocks):
            x, stats = block(x, state.caches[i] if state is not None else None, start)  # (B, T, C)
            aux = aux + stats.aux_loss
            if stats.router_probs is not None:
                router_probs.append(stats.router_probs)
        logits = self.head(self.norm_f(x))  # (B, T, vocab)
        if state is not None:
            state.pos += T
        out = LMOutput(logits, aux_loss=aux, router_probs=router_probs)
        if targets is not None:
            # targets of -1 (outside a masked source's mask) do not count
            out.ce_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
            out.loss = out.ce_loss + aux
        return out


def build_model(config: ModelConfig) -> LM:
    return LM(config)


def count_params(config: ModelConfig) -> int:
    """Parameters of `build_model(config)`, counted on the model itself built on the meta device
    (shapes only: no memory, no initialisation, well under a second), so that the count is the
    definition's and no second description of the shapes can drift from it."""
    with torch.device("meta"):
        return build_model(config).num_params()
