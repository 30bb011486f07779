"""When the chat model abstains: the refusal's probability against a calibrated threshold.

Why not simply let the greedy reply decide: a byte-level model commits to the refusal with its
first byte ("I"), so a story request on which "I" narrowly wins its first byte is refused, even
though the model gives the whole refusal a small probability. The shipped ternary chat model
refused 7.5 % of held-out story requests that way, while the teacher-forced probability of the
whole refusal separated facts from requests with AUROC 0.997 (benchmarks/results/chat.json).

The rule (`AbstainRule`):
- **abstain** iff P(refusal | prompt) > threshold; the reply is then the refusal itself;
- otherwise **answer**: the refusal's opening byte ("I") is banned as the answer's first byte,
  so the answer is never the refusal. (A first version banned it only where it all but
  committed the model to the refusal, P(rest | "I") >= 0.5; greedy decoding then still walked
  into the refusal after "I" on 3 % of held-out story requests, each byte the argmax while the
  product stayed below 0.5. The price of the plain ban: no answer starts with "I".)

The threshold is calibrated, not tuned on the evaluation: split conformal prediction over `n`
in-domain story requests disjoint from every evaluation set (`eval/calibration.jsonl` of
`tilelli prepare-chat`). With t the ceil((n+1)(1-alpha))-th smallest of their scores, a new
request exchangeable with them is refused with probability at most alpha. The rule is stored
beside the checkpoint as `abstain.json` (`tilelli calibrate`); a checkpoint without one falls
back to the greedy decision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tilelli.chat.template import END_BYTE, REFUSAL
from tilelli.errors import TilelliError
from tilelli.infer.score import continuation_logprobs

REFUSAL_REPLY = REFUSAL.encode("utf-8") + END_BYTE
RULE_FILE = "abstain.json"


@dataclass(frozen=True)
class RefusalScore:
    """The model's view of the refusal as the reply to one prompt (nan: prompt too long)."""

    probability: float  # P(whole refusal and END | prompt)
    byte_probs: tuple[float, ...] = ()  # per refusal byte, END excluded


def refusal_scores(decoder: Any, prompts: Sequence[bytes], batch_size: int = 8) -> list[RefusalScore]:
    """Teacher-force the refusal after every prompt; batched."""
    fits = [i for i, p in enumerate(prompts) if len(p) + len(REFUSAL_REPLY) - 1 <= decoder.max_seq_len]
    logps = continuation_logprobs(decoder, [prompts[i] for i in fits], [REFUSAL_REPLY] * len(fits), batch_size)
    out = [RefusalScore(math.nan)] * len(prompts)
    for i, lp in zip(fits, logps, strict=True):
        out[i] = RefusalScore(float(math.exp(lp.sum())), tuple(float(math.exp(v)) for v in lp[:-1]))
    return out


def abstain_probabilities(decoder: Any, prompts: Sequence[bytes], batch_size: int = 8) -> list[float]:
    """P(reply = the refusal then END | prompt) for each prompt (nan for one too long)."""
    return [s.probability for s in refusal_scores(decoder, prompts, batch_size)]


def abstain_probability(decoder: Any, prompt_bytes: bytes) -> float:
    return abstain_probabilities(decoder, [prompt_bytes])[0]


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
class AbstainRule:
    threshold: float
    alpha: float | None = None  # the calibration's target false-refusal rate, when calibrated
    record: dict[str, Any] = field(default_factory=dict)  # how it was calibrated

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise TilelliError(f"abstain threshold {self.threshold} must be in [0, 1]")

    def abstains(self, score: RefusalScore) -> bool:
        return score.probability > self.threshold  # nan (prompt too long) never abstains

    def answer_ban(self) -> tuple[int, ...]:
        """First bytes an answer may not take: the refusal's opening."""
        return (REFUSAL_REPLY[0],)

    def save(self, checkpoint_dir: Path) -> Path:
        path = Path(checkpoint_dir) / RULE_FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, checkpoint_dir: Path) -> AbstainRule | None:
        """The rule stored beside a checkpoint, or None when it has none."""
        path = Path(checkpoint_dir) / RULE_FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            return cls(float(d["threshold"]), d.get("alpha"), d.get("record", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise TilelliError(f"{path} is not a valid abstain rule ({e}); rerun `tilelli calibrate`") from None
