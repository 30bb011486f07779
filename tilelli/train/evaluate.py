"""Validation loss in the units the project publishes: nats per byte and bits per byte.

Bytes are the tokens, so bits per byte is directly comparable across every config (and with
any other byte-level model) without a tokenizer correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tilelli.train.data import IGNORE, eval_windows


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy, nats per byte
    bytes: int  # how many target bytes it was averaged over

    @property
    def bpb(self) -> float:
        return self.loss / math.log(2)


@torch.no_grad()
def window_losses(model: torch.nn.Module, path: str | Path, batch_size: int, seq_len: int,
                  max_batches: int | None = None, max_bytes: int | None = None,
                  on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed cross-entropy (nats) and byte count of every evaluation window of `path`.

    Windows are deterministic and non-overlapping (`eval_windows`), each starting without
    context. On a masked source only the targets inside the mask count. Per-window sums are what
    a bootstrap resamples. Runs in eval mode (the model as
    it is used: parent blocks skip low-weight pathways) and restores the previous mode.
    `max_bytes` stops after exactly that many predictions (`eval_windows`); `on_batch` is told
    how many positions each batch covered (a progress bar's update).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums, counts = [], []
    try:
        for x, y in eval_windows(path, batch_size, seq_len, max_batches, max_bytes):
            logits = model(x.to(device)).logits.float()  # (B, T, V)
            nll = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="none",
                                  ignore_index=IGNORE)  # 0 at ignored targets
            sums.append(nll.view(y.shape).sum(1).double().cpu().numpy())  # (B,)
            counts.append((y != IGNORE).sum(1).numpy())  # (B,) targets that count
            if on_batch is not None:
                on_batch(y.numel())
    finally:
        model.train(was_training)
    return np.concatenate(sums), np.concatenate(counts)


def evaluate_bpb(model: torch.nn.Module, path: str | Path, batch_size: int, seq_len: int,
                 max_batches: int | None = None) -> Evaluation:
    """Cross-entropy of `model` on the bytes of `path`: per-byte losses summed and divided by
    the number of targets, so a short last window counts for exactly its bytes;
    `max_batches=None` covers every byte of the file after the first."""
    sums, counts = window_losses(model, path, batch_size, seq_len, max_batches)
    return Evaluation(float(sums.sum() / counts.sum()), int(counts.sum()))


def bootstrap_ci(sums: np.ndarray, counts: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of nats/byte, resampling whole windows (bytes inside a
    window are not independent; windows nearly are)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(n_resamples, len(sums)))  # (R, W)
    stats = sums[picks].sum(1) / counts[picks].sum(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)
