"""State pathway: a diagonal linear state-space model, one scalar recurrence per channel.

    h_t = a * h_{t-1} + b * x_t,   y_t = c * h_t,   a = tanh(a_raw)

Training runs the whole sequence at once with an exact chunked scan: inside a chunk of L
steps the recurrence is a lower-triangular Toeplitz matrix of powers of a (one small matmul
per channel), and the state is carried from chunk to chunk. Generation carries h instead.
Both give the same numbers (tested to 1e-5 over 512 steps). The O(C) scalars stay FP32
even in a ternary model. There is no data-dependent (Mamba-style) selection.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class StateCache:
    """The carried state h of shape (B, C)."""

    def __init__(self, batch_size: int, channels: int, device: torch.device):
        self.h = torch.zeros(batch_size, channels, device=device)


def _powers(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^0 .. a^n per channel, shape (n + 1, C), by cumulative product (safe for a <= 0)."""
    return torch.cat([torch.ones_like(a)[None], torch.cumprod(a.expand(n, -1), dim=0)], dim=0)


def diagonal_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None, chunk: int = 64) -> torch.Tensor:
    """All states h_t = a*h_{t-1} + u_t for u (B, T, C), a (C,), h0 (B, C) or None -> (B, T, C)."""
    B, T, C = u.shape
    L = min(chunk, T)
    pw = _powers(a, L)  # (L+1, C)
    t = torch.arange(L, device=u.device)
    lag = t[:, None] - t[None, :]  # (L, L): t - s
    # kernel[c, t, s] = a_c^(t-s) for s <= t, else 0
    kernel = pw[lag.clamp(min=0)].permute(2, 0, 1) * (lag >= 0)  # (C, L, L)
    h = h0
    out = []
    for start in range(0, T, L):
        uc = u[:, start:start + L]  # (B, l, C)
        l = uc.shape[1]
        hc = (kernel[:, :l, :l] @ uc.permute(2, 1, 0)).permute(2, 1, 0)  # (C,l,l)@(C,l,B) -> (B, l, C)
        if h is not None:
            hc = hc + pw[1:l + 1][None] * h[:, None, :]  # + a^(t+1) * h0
        h = hc[:, -1]
        out.append(hc)
    return torch.cat(out, dim=1)


class StateSpace(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.a_raw = nn.Parameter(torch.full((channels,), 1.5))
        self.b = nn.Parameter(torch.randn(channels) / math.sqrt(channels))
        self.c = nn.Parameter(torch.randn(channels) / math.sqrt(channels))

    def init_cache(self, batch_size: int, max_len: int, device: torch.device) -> StateCache:  # noqa: ARG002
        return StateCache(batch_size, self.channels, device)

    def forward(self, x: torch.Tensor, cache: StateCache | None = None, pos: int = 0) -> torch.Tensor:  # noqa: ARG002
        a = torch.tanh(self.a_raw)  # (C,)
        u = self.b * x  # (B, T, C)
        if cache is not None and x.shape[1] == 1:
            cache.h = a * cache.h + u[:, 0]  # one step: (B, C)
            return (self.c * cache.h)[:, None]  # (B, 1, C)
        h = diagonal_scan(u, a, None if cache is None else cache.h)  # (B, T, C)
        if cache is not None:
            cache.h = h[:, -1]
        return self.c * h
