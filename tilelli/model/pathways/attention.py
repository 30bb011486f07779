"""Sparse pathway: causal top-k multi-head attention with a KV cache.

Per query, only the `top_k` highest-scoring visible positions (itself included) get softmax
weight; early positions with fewer than `top_k` visible keys use all of them. `top_k=0`
gives ordinary dense causal attention (the vanilla baseline uses the same module).

Efficient rather than literal. On the CPU a C kernel (tilelli/kernels/topk_attention.c)
does it without ever forming the (T, T) scores, and its backward touches only the top_k kept
keys per query. Elsewhere (GPU, no compiler, TILELLI_NO_KERNEL=1) the PyTorch path below is
used: the top-k selection is computed once without autograd from the raw scores, turned into
an additive mask, and the attention itself runs in PyTorch's fused
`scaled_dot_product_attention`. The gradient is the same as that of the literal
"mask the scores, softmax, weight the values" (the selection is piecewise constant), but the
(B, H, T, T) softmax and its backward never go through Python-level tensor ops.

Heads: Q and K have `d_head` features per head, V has `v_head` (Lite: d_model / n_heads,
concatenated, then one d x d projection; the parent block: one head whose V is d_model wide
and no output projection).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from tilelli.kernels import topk_attention as kernel
from tilelli.model.config import TernaryOptions
from tilelli.model.ternary import TernaryLinear


class KVCache:
    """Preallocated keys/values (B, H, max_len, d). How many positions are filled is not kept
    here: the one count is the model's `InferenceState.pos`, passed in as `pos`."""

    def __init__(self, batch_size: int, n_heads: int, max_len: int, d_head: int, v_head: int,
                 device: torch.device):
        self.k = torch.zeros(batch_size, n_heads, max_len, d_head, device=device)
        self.v = torch.zeros(batch_size, n_heads, max_len, v_head, device=device)

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, H, T, d) keys/values at positions pos..pos+T-1; return all keys/values so far."""
        end = pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; {end} requested")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


QUERY_CHUNK = 64


def topk_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int,
                          offset: int = 0) -> torch.Tensor:
    """Attention of queries at positions offset..offset+Tq-1 over keys 0..offset+Tq-1.

    q, k: (B, H, Tq|Tk, d_head); v: (B, H, Tk, v_head) -> (B, H, Tq, v_head).
    Long query blocks are cut into chunks of QUERY_CHUNK that score only the keys they can
    see, so the masked (non-causal-kernel) path does ~60 % of the full T x T work at T=256.
    """
    if kernel.applicable(q, k, v, top_k, offset):  # C kernel: same result, no (Tq, Tk) tensor
        return kernel.topk_attention(q, k, v, top_k, offset)
    Tq, Tk = q.shape[2], k.shape[2]
    if Tq == Tk and offset == 0 and (top_k == 0 or top_k >= Tk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if 0 < top_k < Tk and Tq > QUERY_CHUNK:
        ends = range(QUERY_CHUNK, Tq + QUERY_CHUNK, QUERY_CHUNK)
        return torch.cat([
            topk_causal_attention(q[:, :, e - QUERY_CHUNK:e], k[:, :, :offset + min(e, Tq)],
                                  v[:, :, :offset + min(e, Tq)], top_k, offset + e - QUERY_CHUNK)
            for e in ends], dim=2)
    bias = None
    if Tq > 1:  # a single new query sees every cached key
        pos_q = torch.arange(offset, offset + Tq, device=q.device)
        hidden = pos_q[:, None] < torch.arange(Tk, device=q.device)[None]  # (Tq, Tk)
        bias = torch.zeros(Tq, Tk, device=q.device).masked_fill_(hidden, float("-inf"))
    if top_k == 0 or top_k >= Tk:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    with torch.no_grad():
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk); the 1/sqrt(d) scale cannot change the order
        if bias is not None:
            scores += bias
        keep = top_k_earliest(scores, top_k)  # (B, H, Tq, Tk)
        mask = torch.where(keep, 0.0, float("-inf"))  # additive: fused SDPA's fast path
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scaled by 1/sqrt(d_head)


def top_k_earliest(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Which keys a query keeps: exactly top_k of the highest scores along the last axis (all
    of its finite ones when fewer), the earlier key where scores tie at the k-th place.

    One tie rule for the three implementations (this, tilelli/kernels/topk_attention.c and the
    inference engine), so that they select the same keys and agree at every position: `topk`
    alone leaves the choice among tied keys unspecified, and "score >= k-th" keeps them all.
    Vectorised: the keys above the k-th score, plus the first (top_k - their count) of those
    equal to it, counted by a cumulative sum along the keys."""
    kth = scores.topk(top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # (..., 1)
    # rows with fewer than top_k visible keys get kth = -inf: clamp so hidden keys stay hidden
    kth.clamp_(min=torch.finfo(scores.dtype).min)
    above, tied = scores > kth, scores == kth  # (..., Tk) each
    room = top_k - above.sum(-1, keepdim=True)  # (..., 1): how many tied keys still fit
    return above | (tied & (tied.cumsum(-1) <= room))


class CausalAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, v_head: int, top_k: int,
                 out_proj: bool, opts: TernaryOptions, out_std: float = 0.02):
        super().__init__()
        self.n_heads, self.d_head, self.v_head, self.top_k = n_heads, d_head, v_head, top_k
        qkv_opts = dataclasses.replace(opts, quantize=False) if opts.fp_attention else opts
        self.qkv = TernaryLinear(d_model, n_heads * (2 * d_head + v_head), qkv_opts)
        self.proj = TernaryLinear(n_heads * v_head, d_model, opts, std=out_std) if out_proj else None

    def init_cache(self, batch_size: int, max_len: int, device: torch.device) -> KVCache:
        return KVCache(batch_size, self.n_heads, max_len, self.d_head, self.v_head, device)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        H, dk, dv = self.n_heads, self.d_head, self.v_head
        q, k, v = self.qkv(x).split([H * dk, H * dk, H * dv], dim=-1)  # (B, T, H*d) each
        q = q.view(B, T, H, dk).transpose(1, 2)  # (B, H, T, dk)
        k = k.view(B, T, H, dk).transpose(1, 2)  # (B, H, T, dk)
        v = v.view(B, T, H, dv).transpose(1, 2)  # (B, H, T, dv)
        offset = 0
        if cache is not None:
            offset = pos
            k, v = cache.append(k, v, pos)  # (B, H, pos+T, d)
        y = topk_causal_attention(q, k, v, self.top_k, offset)  # (B, H, T, dv)
        y = y.transpose(1, 2).reshape(B, T, H * dv)  # (B, T, H*dv)
        return self.proj(y) if self.proj is not None else y
