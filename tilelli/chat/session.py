"""A conversation with a chat checkpoint: history, replies, and how sure the model is.

`ChatSession.reply(text)` builds the prompt from the history (`tilelli.chat.template.prompt`,
dropping the oldest turns when the context is full), decides whether to answer it
(`tilelli.chat.abstain.decide`, on the whole conversation), and either returns the refusal or
streams the answer through the one generation loop (`tilelli.infer.generate`; the native
engine when it can run the model). The `Reply` carries what a caller can act on:

- `abstained` (and `reason`: "fact" or "unreadable"): the reply is a refusal;
- `abstain_probability`: the model's probability that the reply opens with the refusal, by
  teacher forcing it, whatever was decided (the higher of the turn's two readings: in its
  conversation and alone, as the rule reads it);
- `surprise`: peak bits per byte of the user's text, read alone (what the rule compares);
- `confidence`: the mean probability the model gave the bytes it produced.

With an `AbstainRule` (the shipped chat checkpoints carry a calibrated one) the rule decides,
and an answer is decoded so that it never quotes a refusal. Without one, whatever the model
generates decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tilelli.chat.abstain import AbstainRule, Decision, answer_sampling, decide
from tilelli.chat.defaults import CHAT_SAMPLING
from tilelli.chat.template import END_BYTE, USER_BYTE, prompt
from tilelli.infer.generate import Batch, SamplingConfig


@dataclass
class Reply:
    text: str
    abstained: bool
    confidence: float  # mean probability of the produced bytes (nan when none)
    abstain_probability: float
    surprise: float  # peak bits per byte of the user's text, read alone
    stop_reason: str  # "stop" (the model ended its turn), "max_new_tokens", "context", "interrupted"
    dropped_turns: int = 0  # oldest turns left out of this prompt to fit the context
    probs: list[float] = field(default_factory=list)  # per produced byte
    reason: str | None = None  # why it abstained: "fact" or "unreadable" (None: answered, or the greedy decision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a number that is nan (nothing to measure) is null."""
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"reply": self.text, "abstained": self.abstained, "reason": self.reason,
                "confidence": num(self.confidence), "abstain_probability": num(self.abstain_probability),
                "surprise": num(self.surprise), "stop_reason": self.stop_reason}


def conversation_prompt(history: Sequence[tuple[str, str]], text: str, max_seq_len: int,
                        sampling: SamplingConfig = CHAT_SAMPLING) -> tuple[bytes, int]:
    """The prompt a session decides and answers on, and how many oldest turns it dropped: room
    is kept for the reply (its byte limit, at most half the context). Calibration and
    evaluation build their prompts here too, so they see what a user's session sees."""
    return prompt(history, text, max_seq_len, min(sampling.max_new_tokens, max_seq_len // 2))


class ChatSession:
    """History plus a decoder; one `reply` per user message."""

    def __init__(self, decoder: Any, sampling: SamplingConfig | None = None,
                 rule: AbstainRule | None = None) -> None:
        self.decoder = decoder
        self.rule = rule
        self.sampling = replace(sampling or CHAT_SAMPLING, stop=(END_BYTE, USER_BYTE))
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str, on_bytes: Callable[[bytes], None] | None = None,
              remember: bool = True) -> Reply:
        """The model's reply to `text` after the history; `on_bytes` receives the reply's bytes
        as they become final. A KeyboardInterrupt stops the reply (kept, stop_reason
        "interrupted"). With `remember`, the turn joins the history."""
        prompt_bytes, dropped = conversation_prompt(self.history, text, self.decoder.max_seq_len, self.sampling)
        decision = decide(self.decoder, self.rule, prompt_bytes)
        if decision.abstain:
            if on_bytes is not None:
                on_bytes(decision.reply.encode("utf-8"))
            probs = list(decision.byte_probs)
            reply = Reply(decision.reply, True, float(np.mean(probs)) if probs else float("nan"),
                          decision.signals.top_refusal, decision.signals.text_surprise, "stop", dropped, probs,
                          decision.reason)
        else:
            reply = self._generate(prompt_bytes, decision, on_bytes)
            reply.dropped_turns = dropped
        if remember:
            self.history = [*self.history[dropped:], (text, reply.text)]
        return reply

    def _generate(self, prompt_bytes: bytes, decision: Decision, on_bytes: Callable[[bytes], None] | None) -> Reply:
        batch = Batch(self.decoder)
        stream = batch.add(prompt_bytes, answer_sampling(self.sampling, self.rule))
        reason = None
        try:
            while not stream.done:
                for _, released in batch.step():
                    if on_bytes is not None and released:
                        on_bytes(bytes(t.byte for t in released))
        except KeyboardInterrupt:
            reason = "interrupted"
        out = bytes(stream.out).decode("utf-8", errors="replace")  # valid UTF-8 by construction
        probs = list(stream.probs)
        return Reply(out, decision.abstained(out), float(np.mean(probs)) if probs else float("nan"),
                     decision.signals.top_refusal, decision.signals.text_surprise,
                     reason or stream.stop_reason or "max_new_tokens", 0, probs)
