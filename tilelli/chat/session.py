"""A conversation with a chat checkpoint: history, replies, and how sure the model is.

`ChatSession.reply(text)` builds the prompt from the history (`tilelli.chat.template.prompt`,
dropping the oldest turns when the context is full), streams the reply through the one
generation loop (`tilelli.infer.generate`; the native engine when it can run the model), and
returns a `Reply` with three numbers a caller can act on:

- `abstained`: the reply is the refusal template (what the user sees);
- `abstain_probability`: the model's probability of the *whole* refusal (every byte of it and
  the END byte) as the reply to this prompt, by teacher forcing it: a graded abstain score
  that exists whether or not the sampled reply refused;
- `confidence`: the mean probability the model gave the bytes it produced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilelli.chat.template import END_BYTE, REFUSAL, USER_BYTE, is_refusal, prompt
from tilelli.infer.generate import Batch, SamplingConfig
from tilelli.infer.score import continuation_logprobs

REFUSAL_REPLY = REFUSAL.encode("utf-8") + END_BYTE


@dataclass
class Reply:
    text: str
    abstained: bool
    confidence: float  # mean probability of the produced bytes (nan when none)
    abstain_probability: float
    stop_reason: str  # "stop" (the model ended its turn), "max_new_tokens", "context", "interrupted"
    dropped_turns: int = 0  # oldest turns left out of this prompt to fit the context
    probs: list[float] = field(default_factory=list)  # per produced byte

    def to_dict(self) -> dict[str, Any]:
        return {"reply": self.text, "abstained": self.abstained, "confidence": self.confidence,
                "abstain_probability": self.abstain_probability, "stop_reason": self.stop_reason}


def abstain_probabilities(decoder: Any, prompts: Sequence[bytes], batch_size: int = 8) -> list[float]:
    """P(reply = REFUSAL then END | prompt) for each prompt, by teacher forcing (nan for a
    prompt too long to leave room for the refusal)."""
    fits = [i for i, p in enumerate(prompts) if len(p) + len(REFUSAL_REPLY) - 1 <= decoder.max_seq_len]
    logps = continuation_logprobs(decoder, [prompts[i] for i in fits], [REFUSAL_REPLY] * len(fits), batch_size)
    out = [float("nan")] * len(prompts)
    for i, lp in zip(fits, logps, strict=True):
        out[i] = float(math.exp(lp.sum()))
    return out


def abstain_probability(decoder: Any, prompt_bytes: bytes) -> float:
    return abstain_probabilities(decoder, [prompt_bytes])[0]


class ChatSession:
    """History plus a decoder; one `reply` per user message."""

    def __init__(self, decoder: Any, sampling: SamplingConfig | None = None) -> None:
        self.decoder = decoder
        base = sampling or SamplingConfig(max_new_tokens=600, temperature=0.7, top_p=0.9)
        self.sampling = SamplingConfig(**{**base.__dict__, "stop": (END_BYTE, USER_BYTE)})
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str, on_bytes: Callable[[bytes], None] | None = None,
              remember: bool = True) -> Reply:
        """The model's reply to `text` after the history; `on_bytes` receives the reply's bytes
        as they become final. A KeyboardInterrupt stops the reply (kept, stop_reason
        "interrupted"). With `remember`, the turn joins the history."""
        room = min(self.sampling.max_new_tokens, self.decoder.max_seq_len // 2)
        prompt_bytes, dropped = prompt(self.history, text, self.decoder.max_seq_len, room)
        batch = Batch(self.decoder)
        stream = batch.add(prompt_bytes, self.sampling)
        reason, p_abstain = None, float("nan")
        try:
            p_abstain = abstain_probability(self.decoder, prompt_bytes)
            while not stream.done:
                for _, released in batch.step():
                    if on_bytes is not None and released:
                        on_bytes(bytes(t.byte for t in released))
        except KeyboardInterrupt:
            reason = "interrupted"
        out = bytes(stream.out).decode("utf-8", errors="replace")
        probs = list(stream.probs)
        reply = Reply(out, is_refusal(out), float(np.mean(probs)) if probs else float("nan"), p_abstain,
                      reason or stream.stop_reason or "max_new_tokens", dropped, probs)
        if remember:
            self.history = [*self.history[dropped:], (text, out)]
        return reply
