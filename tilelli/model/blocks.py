"""Blocks: the routed multi-pathway block (Lite and parent) and the vanilla GPT block.

Routed block: several pathways read the same normalised input; a per-token softmax router
mixes their outputs:  out = x + sum_i r_i * pathway_i(norm(x)).

The Lite block is this block with pathways (local k=5, sparse multi-head top-k, dense) and
no banks or skipping; the parent block adds, from the config:
- `n_banks` > 1: every pathway has n_banks weight copies; the router scores pathway x bank;
  per token each pathway uses its arg-max bank, weighted by the pathway's total router mass.
  (This implementation runs every bank and picks per token: parameters multiply, and so does
  compute here; a gather-by-bank kernel would keep compute per token constant.)
- `top_k_routing`: keep the k largest pathway weights per token, renormalised (off when 0 or
  >= the number of pathways).
- inference-time skipping (`skip_threshold`, eval mode only, never with banks):
  "per_token" zeroes a pathway's contribution on tokens whose weight is below the threshold;
  "per_call" drops a pathway whose weight never reaches the threshold anywhere in the call.
  Skipped pathways are not renormalised. When a cache is carried, a skipped pathway still
  runs to advance its cache (its output is discarded), so stepping stays consistent: one
  token per call with "per_call" equals "per_token" over the whole sequence (tested).
  Compute is saved only on cache-free calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from tilelli.model.config import ModelConfig
from tilelli.model.pathways import CausalAttention, CausalConv, Dense, StateSpace


@dataclass
class BlockStats:
    """What a block reports besides its output: its auxiliary loss and, for routed blocks,
    the per-token pathway weights (B, T, P) before any top-k or skipping."""

    aux_loss: torch.Tensor
    router_probs: torch.Tensor | None = None


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-token entropy in nats of router weights (..., P) -> (...)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def residual_dropout(cfg: ModelConfig) -> nn.Module:
    """Dropout on a residual branch's output; no module at all when off, so a model without
    dropout computes exactly what it did before the option existed."""
    return nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()


def make_pathway(name: str, cfg: ModelConfig) -> nn.Module:
    d, opts = cfg.d_model, cfg.ternary
    out_std = 0.02 / math.sqrt(2 * cfg.n_layers)  # residual-branch outputs start small (GPT-2)
    if name == "local":
        return CausalConv(d, cfg.local_kernel, opts)
    if name == "wide":
        return CausalConv(d, cfg.wide_kernel, opts)
    if name == "state":
        return StateSpace(d)
    if name == "sparse":
        if cfg.arch == "lite":  # heads of d/H, concatenated, one d x d projection
            return CausalAttention(d, cfg.n_heads, cfg.head_dim, cfg.head_dim, cfg.top_k, True, opts, out_std)
        # parent: heads project Q, K to d_head and V to d/H, no output projection
        return CausalAttention(d, cfg.n_heads, cfg.head_dim, d // cfg.n_heads, cfg.top_k, False, opts)
    if name == "dense":
        return Dense(d, cfg.expand, opts, out_std)
    raise ValueError(f"unknown pathway {name!r}")


class RoutedBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.names = cfg.pathways
        self.n_banks = cfg.n_banks
        self.norm = nn.LayerNorm(cfg.d_model)
        self.router = nn.Linear(cfg.d_model, len(self.names) * cfg.n_banks)
        nn.init.normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)
        self.drop = residual_dropout(cfg)
        self.paths = nn.ModuleDict({
            n: nn.ModuleList([make_pathway(n, cfg) for _ in range(cfg.n_banks)]) for n in self.names
        })

    def init_cache(self, batch_size: int, max_len: int, device: torch.device) -> list[list[Any]]:
        return [[bank.init_cache(batch_size, max_len, device) for bank in self.paths[n]] for n in self.names]

    def _run_pathway(self, i: int, h: torch.Tensor, probs: torch.Tensor, cache: list | None, pos: int) -> torch.Tensor:
        banks = self.paths[self.names[i]]
        caches = cache[i] if cache is not None else [None] * len(banks)
        if len(banks) == 1:
            return banks[0](h, caches[0], pos)  # (B, T, C)
        ys = torch.stack([bank(h, c, pos) for bank, c in zip(banks, caches, strict=False)], dim=2)  # (B, T, nb, C)
        choice = probs[:, :, i].argmax(-1)  # (B, T): each token's arg-max bank
        return ys.gather(2, choice[:, :, None, None].expand(-1, -1, 1, ys.shape[-1])).squeeze(2)

    def forward(self, x: torch.Tensor, cache: list | None = None, pos: int = 0) -> tuple[torch.Tensor, BlockStats]:
        B, T, _ = x.shape
        P, nb, cfg = len(self.names), self.n_banks, self.cfg
        h = self.norm(x)  # (B, T, C)
        probs = self.router(h).view(B, T, P * nb).softmax(-1).view(B, T, P, nb)  # pathway x bank
        mass = probs.sum(-1)  # (B, T, P): each pathway's total router weight
        weights = mass
        if 0 < cfg.top_k_routing < P:
            top = weights.topk(cfg.top_k_routing, dim=-1)
            weights = torch.zeros_like(weights).scatter(-1, top.indices, top.values)
            weights = weights / weights.sum(-1, keepdim=True)
        skipping = not self.training and cfg.skip_threshold > 0 and nb == 1
        if skipping:
            reached = weights >= cfg.skip_threshold  # (B, T, P)
            if cfg.skip_mode == "per_token":
                weights = weights * reached
        out = x
        for i in range(P):
            dropped = skipping and cfg.skip_mode == "per_call" and not bool(reached[..., i].any())
            if dropped and cache is None:
                continue  # never needed anywhere in this call: not computed
            y = self._run_pathway(i, h, probs, cache, pos)
            if not dropped:
                out = out + self.drop(weights[..., i:i + 1] * y)
        usage = mass.mean((0, 1))  # (P,)
        aux = cfg.balance_weight * ((usage - 1.0 / P) ** 2).mean()
        if nb > 1:
            bank_usage = (probs / mass.unsqueeze(-1).clamp_min(1e-12)).mean((0, 1))  # (P, nb)
            aux = aux + cfg.bank_balance_weight * ((bank_usage - 1.0 / nb) ** 2).mean()
        if cfg.router_entropy_weight:
            aux = aux + cfg.router_entropy_weight * router_entropy(mass).mean()
        return out, BlockStats(aux, mass)


class VanillaBlock(nn.Module):
    """Pre-norm GPT block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, out_std = cfg.d_model, 0.02 / math.sqrt(2 * cfg.n_layers)
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalAttention(d, cfg.n_heads, cfg.head_dim, cfg.head_dim, cfg.top_k, True,
                                    cfg.ternary, out_std)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = Dense(d, cfg.expand, cfg.ternary, out_std)
        self.drop = residual_dropout(cfg)

    def init_cache(self, batch_size: int, max_len: int, device: torch.device) -> list[Any]:
        return [self.attn.init_cache(batch_size, max_len, device)]

    def forward(self, x: torch.Tensor, cache: list | None = None, pos: int = 0) -> tuple[torch.Tensor, BlockStats]:
        x = x + self.drop(self.attn(self.ln1(x), cache[0] if cache is not None else None, pos))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, BlockStats(x.new_zeros(()))


def make_block(cfg: ModelConfig) -> nn.Module:
    return VanillaBlock(cfg) if cfg.arch == "vanilla" else RoutedBlock(cfg)
