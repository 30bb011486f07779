"""Dense pathway: position-wise feed-forward d -> expand*d -> d with GELU."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tilelli.model.config import TernaryOptions
from tilelli.model.ternary import TernaryLinear


class Dense(nn.Module):
    def __init__(self, d_model: int, expand: int, opts: TernaryOptions, out_std: float = 0.02):
        super().__init__()
        self.up = TernaryLinear(d_model, expand * d_model, opts)
        self.down = TernaryLinear(expand * d_model, d_model, opts, std=out_std)

    def init_cache(self, batch_size: int, max_len: int, device: torch.device) -> None:  # noqa: ARG002
        return None  # position-wise: nothing to carry

    def forward(self, x: torch.Tensor, cache: None = None, pos: int = 0) -> torch.Tensor:  # noqa: ARG002
        return self.down(F.gelu(self.up(x)))  # (B, T, C) -> (B, T, e*C) -> (B, T, C)
