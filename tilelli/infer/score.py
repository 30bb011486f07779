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


def continuation_logprobs(decoder: Any, contexts: Sequence[bytes], continuations: Sequence[bytes],
                          batch_size: int = 8) -> list[np.ndarray]:
    """For each pair, the natural-log probability of every continuation byte given the context
    and the continuation bytes before it: a (len(continuation),) float64 array per pair.

    The last continuation byte is predicted but never fed, so a pair needs
    len(context) + len(continuation) - 1 positions; longer pairs are a clear error.
    """
    if len(contexts) != len(continuations):
        raise ValueError("one continuation per context")
    out: list[np.ndarray] = []
    for first in range(0, len(contexts), batch_size):
        ctx, cont = contexts[first:first + batch_size], continuations[first:first + batch_size]
        chunks = [c + k[:-1] for c, k in zip(ctx, cont, strict=True)]
        for c, k, chunk in zip(ctx, cont, chunks, strict=True):
            if not c or not k:
                raise TilelliError("every context and continuation needs at least one byte")
            if len(chunk) > decoder.max_seq_len:
                raise TilelliError(f"context + continuation is {len(chunk) + 1} bytes; the model's context is "
                                   f"{decoder.max_seq_len}")
        seqs = [decoder.new_sequence(len(chunk)) for chunk in chunks]
        logits = decoder.forward(seqs, chunks, all_logits=True)  # (sum of chunk lengths, V)
        at = 0
        for c, k, chunk in zip(ctx, cont, chunks, strict=True):
            rows = logits[at + len(c) - 1 : at + len(chunk)]  # predictions of k[0], ..., k[-1]
            p = softmax(rows)[np.arange(len(k)), np.frombuffer(k, dtype=np.uint8)]
            out.append(np.log(np.maximum(p, 1e-300)))
            at += len(chunk)
    return out
