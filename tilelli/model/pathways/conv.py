"""The depthwise causal 1-D convolution of the local and wide pathways, ternary-capable.

Left padding k-1, so position t sees inputs t-k+1..t. Stateful generation keeps the last k-1
inputs in a `ConvCache`; on the CPU in float32 the C kernel (`tilelli.kernels.causal_conv`)
does the work, else `F.conv1d`, the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tilelli.kernels import causal_conv
from tilelli.model.config import TernaryOptions
from tilelli.model.ternary import TernaryModule


class ConvCache:
    """The last k-1 inputs of a causal conv, (B, k-1, C), so one new step needs only the new input."""

    def __init__(self, batch_size: int, channels: int, kernel: int, device: torch.device):
        self.buf = torch.zeros(batch_size, kernel - 1, channels, device=device)


class CausalConv(TernaryModule):
    """Depthwise causal 1-D convolution over time (left padding k-1), ternary-capable."""

    def __init__(self, channels: int, kernel: int, opts: TernaryOptions):
        super().__init__((channels, 1, kernel), opts, std=1.0 / math.sqrt(kernel))
        self.channels, self.kernel = channels, kernel

    def init_cache(self, batch_size: int, max_len: int, device: torch.device) -> ConvCache:  # noqa: ARG002
        return ConvCache(batch_size, self.channels, self.kernel, device)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None, pos: int = 0) -> torch.Tensor:  # noqa: ARG002
        """x (B, T, C) -> (B, T, C). On the CPU in float32, the C kernel in this layout; else (or
        inside `kernel_disabled()`) F.conv1d on the transposed input, the reference."""
        w = self.effective_weight()  # (C, 1, k)
        T = x.shape[1]
        if cache is None:
            if causal_conv.applicable(x, w):
                return causal_conv.causal_conv(x, w)  # (B, T, C), no transposes
            xe = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))  # (B, C, k-1+T)
        else:
            history = cache.buf  # (B, k-1, C)
            xe = torch.cat([history, x], dim=1)  # (B, k-1+T, C)
            cache.buf = xe[:, T:]  # the last k-1 inputs
            if T == 1:  # one decode step: a dot product per channel, faster than conv1d or a kernel call
                return (xe * w[:, 0].T).sum(1, keepdim=True)  # (B, k, C) -> (B, 1, C)
            if causal_conv.applicable(x, w, history):
                return causal_conv.causal_conv(x, w, history)
            xe = xe.transpose(1, 2)  # (B, C, k-1+T)
        return F.conv1d(xe, w, groups=self.channels).transpose(1, 2)  # (B, T, C)
