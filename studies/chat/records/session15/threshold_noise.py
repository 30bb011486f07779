"""Session 15: how much of the default chat model's facts rate is the calibration's sampling noise?

The rule's thresholds are split-conformal quantiles of a few hundred calibration prompts per kind
(`tilelli calibrate`); the small talk's (150 prompts, alpha 0.03 / 2: the 2nd-highest score) sets
them on every shipped model. This script measures the shipped ternary chat model's signals once
(its shipped detector, torch path) on the calibration set and the single-turn held-out sets,
recalibrates as `AbstainRule.calibrate` does (alpha 0.03, per kind: it reproduces the shipped
thresholds), and reports where split-conformal calibration on 150 exchangeable prompts puts the
threshold from one draw of them to the next (Beta(n + 1 - k, k), exact for exchangeable scores)
and the held-out refusal rates at the neighbouring order statistics; and, as an oracle that no rule
may use, the most facts any single threshold refuses alone with requests <= 3 % and small talk
<= 5 %. (A bootstrap of the set is not used: it is biased for the top order statistics.) It
chooses nothing: the shipped rule stays.

    python studies/chat/records/session15/threshold_noise.py --data ~/tl/data/chat7 > threshold_noise.txt

(from the repository root, with it on PYTHONPATH; ~2 minutes on 2 threads)
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from studies.common import ROOT
from tilelli.chat.abstain import AbstainRule
from tilelli.commands.calibrate import row_signals
from tilelli.infer import load_decoder

MODEL = ROOT / "checkpoints" / "tilelli-chat-lite-ternary"
HELD_OUT = {"fact": "facts", "request": "requests", "small_talk": "small_talk"}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="the `tilelli prepare-chat` set the rule was calibrated on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shipped = AbstainRule.load(MODEL)
    decoder = load_decoder(MODEL, "torch", args.threads, int8=False)
    cal = rows(args.data / "eval" / "calibration.jsonl")
    cal_signals = row_signals(decoder, cal)
    kinds = [r["kind"] for r in cal]
    held = {kind: row_signals(decoder, rows(args.data / "eval" / f"{f}.jsonl")) for kind, f in HELD_OUT.items()}
    again = AbstainRule.calibrate(cal_signals, 0.03, {}, shipped.detector, kinds)
    print(f"shipped thresholds {shipped.refusal_threshold:.4f} / {shipped.surprise_threshold:.3f}; "
          f"recalibrated here {again.refusal_threshold:.4f} / {again.surprise_threshold:.3f}")

    def rates(rule: AbstainRule) -> dict[str, float]:
        return {k: 100 * float(np.mean([rule.decide(s).abstain for s in sig])) for k, sig in held.items()}

    print("held-out refusal rates alone at the shipped rule (%):",
          {k: round(v, 1) for k, v in rates(shipped).items()})
    # The small talk's refusal threshold is its (k = ceil((n+1)(1 - alpha/2)))-th smallest score. For
    # exchangeable scores the share of the kind's distribution above it is Beta(n + 1 - k, k): where
    # in that distribution a calibration set of this size puts the threshold, from one draw to the next.
    talk = sorted((again.refusal_score(s) for s, k in zip(cal_signals, kinds, strict=True) if k == "small_talk"),
                  reverse=True)
    n = len(talk)
    k = math.ceil((n + 1) * (1 - 0.015))
    above = scipy_free_beta_percentiles(n + 1 - k, k, (5, 50, 95))
    print(f"\nsmall talk: n {n}, threshold = score {n + 1 - k} from the top; share of small talk above the "
          f"threshold over calibration draws, percentiles 5 / 50 / 95: "
          + " / ".join(f"{100 * a:.2f} %" for a in above))
    print("held-out refusal rates alone (%) if the small talk's threshold were its calibration score r from the top"
          " (the requests' threshold stays):")
    floor = again.record["by_kind"]["request"]["refusal"]
    for r in range(1, 7):
        t = max(talk[r - 1], floor)
        print(f"  r {r} ({100 * r / n:.1f} % of the calibration small talk above-or-at): log-odds {t:.3f} ->",
              {kk: round(v, 1) for kk, v in rates(replace(again, refusal_threshold=t)).items()})

    # What the model's scores allow at all: the threshold chosen on the held-out sets themselves (an
    # oracle, not a rule: the evaluation would no longer be held out), single-turn.
    scores = sorted({again.refusal_score(s) for sig in held.values() for s in sig})
    best = None
    for t in scores:
        got = rates(replace(again, refusal_threshold=t))
        if got["request"] <= 3 and got["small_talk"] <= 5 and (best is None or got["fact"] > best[1]["fact"]):
            best = (t, got)
    print(f"oracle (threshold chosen on the held-out sets, not shippable): log-odds {best[0]:.3f} ->",
          {kk: round(v, 1) for kk, v in best[1].items()})


def scipy_free_beta_percentiles(a: int, b: int, q: tuple[int, ...], draws: int = 200_000) -> list[float]:
    """Percentiles of Beta(a, b) by sampling (numpy only; 200,000 draws: +-0.01 points here)."""
    return [float(v) for v in np.percentile(np.random.default_rng(0).beta(a, b, draws), q)]

if __name__ == "__main__":
    main()
