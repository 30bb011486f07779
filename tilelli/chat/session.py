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

With an `AbstainRule` (tilelli.chat.abstain; the shipped chat checkpoints carry a calibrated
one), the abstain probability decides: above the threshold the reply is the refusal, below it
the model answers (and its answer may not open like the refusal). Without one, whatever the
model generates decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tilelli.chat.abstain import AbstainRule, refusal_scores
from tilelli.chat.template import END_BYTE, REFUSAL, USER_BYTE, is_refusal, prompt
from tilelli.infer.generate import Batch, SamplingConfig


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


class ChatSession:
    """History plus a decoder; one `reply` per user message."""

    def __init__(self, decoder: Any, sampling: SamplingConfig | None = None,
                 rule: AbstainRule | None = None) -> None:
        self.decoder = decoder
        self.rule = rule
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
        score = refusal_scores(self.decoder, [prompt_bytes])[0]
        if self.rule is not None and self.rule.abstains(score):
            if on_bytes is not None:
                on_bytes(REFUSAL.encode("utf-8"))
            probs = list(score.byte_probs)
            reply = Reply(REFUSAL, True, float(np.mean(probs)), score.probability, "stop", dropped, probs)
        else:
            reply = self._generate(prompt_bytes, score.probability, on_bytes)
            reply.dropped_turns = dropped
        if remember:
            self.history = [*self.history[dropped:], (text, reply.text)]
        return reply

    def _generate(self, prompt_bytes: bytes, p_abstain: float, on_bytes: Callable[[bytes], None] | None) -> Reply:
        ban = self.rule.answer_ban() if self.rule is not None else ()
        batch = Batch(self.decoder)
        stream = batch.add(prompt_bytes, replace(self.sampling, ban_first=ban))
        reason = None
        try:
            while not stream.done:
                for _, released in batch.step():
                    if on_bytes is not None and released:
                        on_bytes(bytes(t.byte for t in released))
        except KeyboardInterrupt:
            reason = "interrupted"
        out = bytes(stream.out).decode("utf-8", errors="replace")
        probs = list(stream.probs)
        return Reply(out, is_refusal(out), float(np.mean(probs)) if probs else float("nan"), p_abstain,
                     reason or stream.stop_reason or "max_new_tokens", 0, probs)
