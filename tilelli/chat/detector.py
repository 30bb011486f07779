"""The refusal detector: a linear read-out of what the chat model predicts, trained to refuse.

Why: the probability that the model opens its reply with the refusal is one number the model
computes on the way to its first byte, and fine-tuning moves it slowly (one decisive byte per
refused turn). The model's whole next-byte distribution at that point is a full-rank view of its
final hidden state (the head maps d_model <= V dimensions to V bytes), and its mean over the
user's text says what that text made it expect. A logistic regression on those (log
probabilities, floored), plus log P(refusal) and the surprise, trained on the chat set's own
training turns (label: the reply was a refusal), separates what to refuse from what to answer
better than P(refusal) alone; the L2 strength is chosen by cross-validation on those turns
(`tilelli.probe.detector.fit_detector`, the probe's detector), and its standardisation and
principal components are folded into one weight vector, so scoring a prompt is one dot product.

The rule (`tilelli.chat.abstain.AbstainRule`) thresholds the detector's log-odds with the same
conformal calibration it gives P(refusal) without one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilelli.chat.template import ASSISTANT, END, USER, is_refusal
from tilelli.errors import TilelliError

FLOOR = 1e-6  # probabilities below this read as this: the rare bytes' logs are noise
MAX_HISTORY = 2  # previous turns a training prompt keeps (0..MAX_HISTORY, at random)


def features(first: np.ndarray, text: np.ndarray, refusal: float, surprise: float) -> tuple[float, ...]:
    """What the detector reads for one prompt: the log next-byte probabilities of the reply's first
    byte (V), their mean over the predictions of the user's text (V; `text` is (n, V), n >= 1),
    log P(refusal) and the surprise."""
    logs = np.log(np.maximum(np.asarray(text, dtype=np.float64), FLOOR)).mean(0)
    return (*np.log(np.maximum(np.asarray(first, dtype=np.float64), FLOOR)), *logs,
            math.log(max(refusal, 1e-30)), surprise)


def training_turns(train: bytes, n: int, seed: int = 0) -> list[tuple[list[tuple[str, str]], str, bool]]:
    """Up to n turns of a chat training stream (`tilelli prepare-chat`'s train.bin), each as
    (history, user text, was refused), with 0..MAX_HISTORY of the turns before it as history
    (conversations follow each other in the stream, as the windows the model trained on do)."""
    turns = []
    for raw in train.split(bytes([END])):
        user, sep, reply = raw.partition(bytes([ASSISTANT]))
        if not sep or not user.startswith(bytes([USER])):
            continue
        try:
            turns.append((user[1:].decode("utf-8"), reply.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(turns)), min(n, len(turns))))
    out = []
    for i in picked:
        back = rng.randint(0, min(MAX_HISTORY, i))
        out.append((turns[i - back:i], turns[i][0], is_refusal(turns[i][1])))
    return out


@dataclass(frozen=True)
class Detector:
    """Log-odds of "refuse" = weights . features + bias."""

    weights: tuple[float, ...]
    bias: float
    record: dict[str, Any] = field(default_factory=dict)  # how it was fitted

    def score(self, x: Sequence[float]) -> float:
        if len(x) != len(self.weights):
            return math.nan  # a prompt measured without features (too long to score) never counts
        return float(np.dot(self.weights, x) + self.bias)

    @classmethod
    def fit(cls, x: np.ndarray, refused: np.ndarray, record: dict[str, Any]) -> Detector:
        """Fit on (N, F) features of training prompts and whether each was refused."""
        from tilelli.probe.detector import fit_detector

        if x.ndim != 2 or len(x) != len(refused) or len(set(refused.tolist())) < 2:
            raise TilelliError("the detector needs features of prompts of both kinds, refused and answered")
        signals, hidden = x[:, -2:], x[:, :-2]
        det = fit_detector(signals, hidden, refused.astype(float), ["log_refusal", "surprise"])
        theta_s, theta_h = det.theta[:2] / det.s_scale, det.basis @ (det.theta[2:-1] / det.p_scale)
        weights = np.r_[theta_h, theta_s]
        bias = det.theta[-1] - det.s_mean @ theta_s - det.h_mean @ theta_h
        return cls(tuple(float(w) for w in weights), float(bias),
                   {**record, "l2": det.lam, "cv_auroc": det.cv_auroc, "prompts": len(refused),
                    "refused": int(refused.sum())})

    def to_dict(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "bias": self.bias, "record": self.record}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detector:
        return cls(tuple(float(w) for w in d["weights"]), float(d["bias"]), dict(d.get("record", {})))
