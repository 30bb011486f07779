"""Teacher forcing through a generation decoder: how likely a model finds given continuations.

One forward pass per batch of (context, continuation) pairs, through the same decoder that
generates (native engine or PyTorch), so a score and a generation always come from the same
numbers. Used for the chat model's abstain probability (the probability of the whole refusal)
and for bits per byte of reference replies given their request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tilelli.errors import TilelliError
from tilelli.infer.generate import softmax


def continuation_predictions(decoder: Any, contexts: Sequence[bytes], continuations: Sequence[bytes],
                             batch_size: int = 8) -> list[np.ndarray]:
    """For each pair, the model's next-byte probabilities at every continuation byte and after
    the last one: a (len(continuation) + 1, V) array whose row j predicts continuation[j] and
    whose last row is what the model would write next. The continuation is fed whole, so a
    pair needs len(context) + len(continuation) positions."""
    return _teacher_forced(decoder, contexts, continuations, batch_size, feed_last=True)


def chosen_logprobs(rows: np.ndarray, continuation: bytes) -> np.ndarray:
    """log P(continuation[j]) from prediction rows (row j predicts byte j)."""
    p = rows[np.arange(len(continuation)), np.frombuffer(continuation, dtype=np.uint8)]
    return np.log(np.maximum(p, 1e-300))


def continuation_logprobs(decoder: Any, contexts: Sequence[bytes], continuations: Sequence[bytes],
                          batch_size: int = 8) -> list[np.ndarray]:
    """For each pair, the natural-log probability of every continuation byte given the context
    and the continuation bytes before it: a (len(continuation),) float64 array per pair.

    The last continuation byte is predicted but never fed, so a pair needs
    len(context) + len(continuation) - 1 positions; longer pairs are a clear error.
    """
    rows = _teacher_forced(decoder, contexts, continuations, batch_size, feed_last=False)
    return [chosen_logprobs(r, k) for r, k in zip(rows, continuations, strict=True)]


def _teacher_forced(decoder: Any, contexts: Sequence[bytes], continuations: Sequence[bytes], batch_size: int,
                    feed_last: bool) -> list[np.ndarray]:
    """One forward pass per batch; pairs of similar length are batched together (less padding
    on the PyTorch path), the prediction rows come back in the given order."""
    if len(contexts) != len(continuations):
        raise ValueError("one continuation per context")
    for c, k in zip(contexts, continuations, strict=True):
        if not c or not k:
            raise TilelliError("every context and continuation needs at least one byte")
        if len(c) + len(k) - (not feed_last) > decoder.max_seq_len:
            raise TilelliError(f"context + continuation is {len(c) + len(k)} bytes; the model's context is "
                               f"{decoder.max_seq_len}")
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]) + len(continuations[i]))
    out: list[np.ndarray] = [None] * len(contexts)  # type: ignore[list-item]
    for first in range(0, len(order), batch_size):
        idx = order[first:first + batch_size]
        chunks = [contexts[i] + (continuations[i] if feed_last else continuations[i][:-1]) for i in idx]
        seqs = [decoder.new_sequence(len(chunk)) for chunk in chunks]
        logits = decoder.forward(seqs, chunks, all_logits=True)  # (sum of chunk lengths, V)
        at = 0
        for i, chunk in zip(idx, chunks, strict=True):
            out[i] = softmax(logits[at + len(contexts[i]) - 1 : at + len(chunk)])  # predictions of k[0], ...
            at += len(chunk)
    return out
