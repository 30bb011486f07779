"""Validation loss in the units the project publishes: nats per byte and bits per byte.

Bytes are the tokens, so bits per byte is directly comparable across every config (and with
any other byte-level model) without a tokenizer correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tilelli.data import eval_windows


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy, nats per byte
    bytes: int  # how many target bytes it was averaged over

    @property
    def bpb(self) -> float:
        return self.loss / math.log(2)


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, path: str | Path, batch_size: int, seq_len: int,
                 max_batches: int | None = None) -> Evaluation:
    """Cross-entropy of `model` on the bytes of `path` (deterministic non-overlapping windows).

    Sums per-byte losses and divides by the number of targets, so a short last window counts
    for exactly its bytes; `max_batches=None` covers every byte of the file after the first.
    Runs in eval mode (the model as it is used: parent blocks skip low-weight pathways) and
    restores the previous mode.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for x, y in eval_windows(path, batch_size, seq_len, max_batches):
            out = model(x.to(device), y.to(device))
            total += out.ce_loss.item() * y.numel()  # mean over the batch back to a sum
            count += y.numel()
    finally:
        model.train(was_training)
    return Evaluation(total / count, count)
