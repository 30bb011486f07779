"""The one decision of every chat front end: answer the last user turn, or abstain.

`tilelli chat`, `chat --json`, the server and its page all call `decide` on the whole
conversation's prompt (history + the new turn). The turn is read twice: in its conversation,
exactly as the model sees it, and alone, as the first turn of a new one. A world-fact question
does not become answerable because a story came before it, but a 10 M model's reading of it
there is weak: after a story the fine-tuned models give "What is the capital of Peru?" a
refusal probability of a few per cent where alone it is ~0.9. A follow-up that needs the story
("What was the dog's name?") is answered alone too, because the chat set teaches such questions
as answerable. So the rule abstains when either reading's refusal score calls for it. Surprise
is a property of the text (can the model read it at all?), so it is taken from the turn alone:
after a story, the model expects another request, and "ty" or "howdy." surprise it there at 11-13
bits/byte where alone they read at 7-8; in the conversation they were refused as unreadable.

Two signals per reading, from one teacher-forced pass over the prompt and the refusals' shared
opening sentence (`measure`):
- **refusal**: the model's probability that its reply opens with "I can't answer that. ", the
  sentence both refusals begin with (the next byte's probabilities say which one it would go on
  with). A byte-level model commits with its first byte, so letting greedy decoding decide
  refuses every request on which "I" narrowly wins; the probability of the whole sentence is a
  graded score that separates world-fact questions from requests.
- **surprise**: the highest mean bits per byte of any PEAK_WINDOW consecutive bytes of the last
  user turn's text. A story model finds gibberish, code, other languages and sums far less
  likely than the simple English it was trained on, and it was never taught to refuse them, so
  the refusal alone misses them.

The rule (`AbstainRule`) abstains iff a reading's refusal score > t_r (with the refusal the
model would go on with: "... Facts like that are beyond a 10M model." or "... I only understand
simple English.") or the text's surprise, read alone, > t_s (the second). Both thresholds are calibrated,
not tuned on the evaluation: split conformal prediction over the prompts the model *should*
answer (story requests and small talk in phrasings never trained on, single-turn and as third
turns; `eval/calibration.jsonl`), each at alpha / 2, for each kind apart (one alpha for all, or
each kind's own; the rule takes the highest kind's thresholds). By the union bound a new story
request, or a new piece of small talk, exchangeable with its kind's is refused with probability
at most its kind's alpha. (Held-out template families are not exchangeable with the calibration's:
session 15 measured requests' own threshold refusing 3.2 % of held-out requests alone and 7 % after
a story at alpha 0.03; the small talk's, higher, is what keeps them at 1-3 %.)

When the rule answers, the answer is decoded under constraints (`answer_sampling`): valid
UTF-8, and no 12-byte run of a refusal anywhere (nor its first 6 bytes at the start), so an
answer never contains the refusal or a piece of it. A checkpoint without a rule falls back to
the greedy decision: whatever the model generates, refusal or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tilelli.chat.detector import Detector, features
from tilelli.chat.template import ASSISTANT, END_BYTE, REFUSAL, REFUSAL_UNREADABLE, USER, is_refusal
from tilelli.errors import TilelliError
from tilelli.infer import float_path
from tilelli.infer.generate import SamplingConfig
from tilelli.infer.score import chosen_logprobs, continuation_logprobs, continuation_predictions

RULE_FILE = "abstain.json"
PEAK_WINDOW = 32  # bytes: a local surprise (a question at the end of a story) is not diluted
REASONS = {"fact": REFUSAL, "unreadable": REFUSAL_UNREADABLE}
OPENING = "I can't answer that. "  # what both refusals open with; the next byte tells them apart
assert all(text.startswith(OPENING) for text in REASONS.values())


def highest(values: Iterable[float]) -> float:
    """The largest value that is not nan (nan when there is none: nothing was measured)."""
    return max((v for v in values if not math.isnan(v)), default=math.nan)


@dataclass(frozen=True)
class Signals:
    """What the model says about one prompt (nan: the prompt does not fit with a refusal)."""

    refusal: float  # P(the reply opens with the refusal sentence OPENING)
    surprise: float  # peak PEAK_WINDOW-byte mean bits per byte of the last user text
    likelier: str = "fact"  # the refusal the model would go on with after OPENING
    features: tuple[float, ...] = field(default=(), repr=False)  # what a rule's detector reads
    alone: Signals | None = field(default=None, repr=False)  # the last user turn read without its history

    @property
    def readings(self) -> tuple[Signals, ...]:
        """The turn in its conversation, then alone (when it has a history)."""
        return (self,) if self.alone is None else (self, self.alone)

    @property
    def top_refusal(self) -> float:
        return highest(r.refusal for r in self.readings)

    @property
    def text_surprise(self) -> float:
        """The last user turn's surprise read alone (its only reading when it has no history)."""
        return (self.alone or self).surprise


def peak_bits_per_byte(logprobs: np.ndarray, window: int = PEAK_WINDOW) -> float:
    """The highest mean bits per byte over `window` consecutive bytes (all of them when fewer)."""
    bits = -np.asarray(logprobs, dtype=np.float64) / math.log(2)
    if bits.size == 0:
        return math.nan
    w = min(window, bits.size)
    sums = np.convolve(bits, np.ones(w), mode="valid")
    return float(sums.max() / w)


def measure(decoder: Any, prompts: Sequence[bytes], batch_size: int = 16, alone: bool = True,
            on_float: bool = True) -> list[Signals]:
    """Both signals for every chat prompt (history + USER text ASSISTANT), in one teacher-forced
    pass each: the last user turn's text and the refusals' shared OPENING after the rest; the
    next-byte probabilities after OPENING say which refusal the model would go on with. A prompt
    with a history is measured a second time without it (`Signals.alone`), unless `alone` is off
    (the detector's fit reads the conversation's reading only). On the exact float path, so that
    the integer path, a ternary model's default for its replies, changes no decision; `on_float`
    off reads them on the decoder's own path (what studies/quality/int8.py counts: the decisions
    that reading would change)."""
    if not on_float:
        return _signals(decoder, prompts, batch_size, alone)
    with float_path(decoder):
        return _signals(decoder, prompts, batch_size, alone)


def _signals(decoder: Any, prompts: Sequence[bytes], batch_size: int, alone: bool) -> list[Signals]:
    starts = [p.rfind(bytes([USER])) + 1 for p in prompts]
    if any(s == 0 or not p or p[-1] != ASSISTANT for p, s in zip(prompts, starts, strict=True)):
        raise TilelliError("a chat prompt must end with a user turn (USER text ASSISTANT)")
    opening = OPENING.encode("utf-8")
    longest = max(len(text.encode("utf-8")) for text in REASONS.values()) + 1
    fits = [i for i, p in enumerate(prompts) if len(p) + longest - 1 <= decoder.max_seq_len]
    continuations = {i: prompts[i][starts[i]:] + opening for i in fits}
    predictions = continuation_predictions(decoder, [prompts[i][:starts[i]] for i in fits],
                                           list(continuations.values()), batch_size)
    out = [Signals(math.nan, math.nan)] * len(prompts)
    for i, rows in zip(fits, predictions, strict=True):  # rows (len(continuation) + 1, V)
        lp = chosen_logprobs(rows, continuations[i])
        n_text = len(prompts[i]) - starts[i] - 1  # the user's text, without the ASSISTANT marker
        goes_on = {r: rows[-1][REASONS[r].encode("utf-8")[len(opening)]] for r in REASONS}
        refusal, surprise = float(math.exp(lp[n_text + 1:].sum())), peak_bits_per_byte(lp[:n_text])
        out[i] = Signals(refusal, surprise, max(goes_on, key=goes_on.get),
                         features(rows[n_text + 1], rows[:max(n_text, 1)], refusal, surprise))
    later = [i for i, s in enumerate(starts) if s > 1 and alone]  # turns with a history: read them alone too
    if later:
        for i, alone in zip(later, _signals(decoder, [prompts[i][starts[i] - 1:] for i in later], batch_size, True),
                            strict=True):
            out[i] = replace(out[i], alone=alone)
    return out


def conformal_threshold(scores: Sequence[float], alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score: exceeded by a new exchangeable score with
    probability at most alpha."""
    if not 0 < alpha < 1:
        raise TilelliError(f"alpha={alpha} must be in (0, 1)")
    ranked = sorted(s for s in scores if not math.isnan(s))
    k = math.ceil((len(ranked) + 1) * (1 - alpha))
    if k > len(ranked):
        raise TilelliError(f"{len(ranked)} calibration prompts are too few for alpha={alpha}; "
                           f"need at least {math.ceil(1 / alpha) - 1}")
    return ranked[k - 1]


@dataclass(frozen=True)
class Decision:
    """Abstain or answer; when abstaining, which refusal and why."""

    abstain: bool
    reason: str | None  # "fact" (the model's refusal is likely) or "unreadable" (the text surprises it)
    signals: Signals
    byte_probs: tuple[float, ...] = ()  # the model's probability of each byte of the refusal given

    @property
    def reply(self) -> str | None:
        return REASONS[self.reason] if self.reason else None

    def abstained(self, answer: str) -> bool:
        """Whether the user got a refusal: the rule's, or (greedy decision) one the model wrote."""
        return self.abstain or is_refusal(answer)


@dataclass(frozen=True)
class AbstainRule:
    refusal_threshold: float  # on the refusal score: the detector's log-odds, or P(refusal) without one
    surprise_threshold: float = math.inf  # bits per byte; inf = the refusal alone decides
    alpha: float | dict[str, float] | None = None  # the calibration's bound on false refusals (per kind)
    record: dict[str, Any] = field(default_factory=dict)  # how it was calibrated
    detector: Detector | None = None

    def __post_init__(self) -> None:
        if self.detector is None and not 0 <= self.refusal_threshold <= 1:
            raise TilelliError(f"refusal threshold {self.refusal_threshold} must be in [0, 1]")
        if not math.isfinite(self.refusal_threshold):
            raise TilelliError(f"refusal threshold {self.refusal_threshold} must be a finite number")
        if not self.surprise_threshold > 0:
            raise TilelliError(f"surprise threshold {self.surprise_threshold} must be > 0 bits per byte")

    def reading_score(self, r: Signals) -> float:
        """How strongly one reading calls for a refusal (nan when it could not be measured)."""
        return self.detector.score(r.features) if self.detector is not None else r.refusal

    def refusal_score(self, s: Signals) -> float:
        """How strongly the prompt calls for a refusal: its strongest reading."""
        return highest(map(self.reading_score, s.readings))

    def decide(self, s: Signals) -> Decision:
        """nan signals (a prompt too long to score) never abstain."""
        for r in s.readings:
            if self.reading_score(r) > self.refusal_threshold:
                return Decision(True, r.likelier, s)
        if s.text_surprise > self.surprise_threshold:
            return Decision(True, "unreadable", s)
        return Decision(False, None, s)

    @classmethod
    def calibrate(cls, signals: Sequence[Signals], alpha: float | dict[str, float], record: dict[str, Any],
                  detector: Detector | None = None, kinds: Sequence[str] | None = None) -> AbstainRule:
        """Each threshold at alpha / 2 over answerable prompts, kind by kind (`kinds`, one per
        signal; Mondrian conformal prediction), the rule's the highest kind's: every kind's false
        refusals are <= its alpha (one for all, or {kind: alpha}), not only their mix's. (Pooled,
        the many requests set the thresholds and the small talk above them was refused 3-10x as
        often.)"""
        unfitted = cls(0.0, detector=detector)
        kinds = ["answerable"] * len(signals) if kinds is None else list(kinds)
        if len(kinds) != len(signals):
            raise TilelliError(f"{len(kinds)} kinds for {len(signals)} calibration prompts")
        by_kind = {}
        for kind in sorted(set(kinds)):
            mine = [s for s, k in zip(signals, kinds, strict=True) if k == kind]
            if isinstance(alpha, dict) and kind not in alpha:
                raise TilelliError(f"no alpha for the calibration prompts of kind {kind!r} (alpha is given for "
                                   f"{', '.join(sorted(alpha))})")
            a = alpha[kind] if isinstance(alpha, dict) else alpha
            try:
                by_kind[kind] = {"n": len(mine), "alpha": a,
                                 "refusal": conformal_threshold([unfitted.refusal_score(s) for s in mine], a / 2),
                                 "surprise": conformal_threshold([s.text_surprise for s in mine], a / 2)}
            except TilelliError as e:
                raise TilelliError(f"calibration prompts of kind {kind!r}: {e}") from None
        return cls(max(t["refusal"] for t in by_kind.values()), max(t["surprise"] for t in by_kind.values()),
                   alpha, {**record, "by_kind": by_kind}, detector)

    def save(self, checkpoint_dir: Path) -> Path:
        path = Path(checkpoint_dir) / RULE_FILE
        d = asdict(self)
        d["surprise_threshold"] = d["surprise_threshold"] if math.isfinite(self.surprise_threshold) else None
        d["detector"] = None if self.detector is None else self.detector.to_dict()
        path.write_text(json.dumps(d, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, checkpoint_dir: Path) -> AbstainRule | None:
        """The rule stored beside a checkpoint, or None when it has none."""
        path = Path(checkpoint_dir) / RULE_FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            refusal = d["refusal_threshold"] if "refusal_threshold" in d else d["threshold"]  # (rules before v2)
            surprise = d.get("surprise_threshold")
            detector = Detector.from_dict(d["detector"]) if d.get("detector") else None
            return cls(float(refusal), math.inf if surprise is None else float(surprise),
                       d.get("alpha"), d.get("record", {}), detector)
        except (ValueError, KeyError, TypeError) as e:
            raise TilelliError(f"{path} is not a valid abstain rule ({e}); rerun `tilelli calibrate`") from None


def decide(decoder: Any, rule: AbstainRule | None, prompt: bytes) -> Decision:
    """The decision for one chat prompt; without a rule, never abstain before generating (the
    greedy decision: the generated reply says whether it refused)."""
    s = measure(decoder, [prompt])[0]
    d = rule.decide(s) if rule is not None else Decision(False, None, s)
    if d.abstain:  # the given refusal's own byte probabilities (what confidences report), in the
        # conversation, or after the turn alone when the conversation leaves no room for a refusal
        context = prompt if not math.isnan(s.refusal) else prompt[prompt.rfind(bytes([USER])):]
        with float_path(decoder):
            lp = continuation_logprobs(decoder, [context], [d.reply.encode("utf-8") + END_BYTE])[0]
        return replace(d, byte_probs=tuple(float(math.exp(v)) for v in lp[:-1]))
    return d


def answer_sampling(cfg: SamplingConfig, rule: AbstainRule | None) -> SamplingConfig:
    """How an answer is decoded: valid UTF-8 always; under a rule, never quoting a refusal."""
    avoid = tuple(t.encode("utf-8") for t in REASONS.values()) if rule is not None else ()
    return replace(cfg, valid_utf8=True, avoid=avoid)
