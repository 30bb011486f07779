"""Session 16: a chat model's abstain decisions on a chat set's held-out sets, from signals measured once.

`measure`: the signals of every row of the calibration and held-out sets (`tilelli.commands.calibrate.
row_signals`: float path, torch, one thread), pickled. `rates`: a calibrated rule (the checkpoint's
abstain.json, from `tilelli calibrate`) applied to them: % refused by kind and context (the decisions
`studies/chat/evaluate.py` makes, without generating the answers), and the calibration prompts with the
highest scores, which set the thresholds. It chooses nothing.

    python studies/chat/records/session16/rates.py measure CHECKPOINT DATA OUT.pkl   # ~6 min
    python studies/chat/records/session16/rates.py rates OUT.pkl CHECKPOINT

(from the repository root of the branch that built DATA, with it on PYTHONPATH)
"""

from __future__ import annotations

import json
import pickle
import sys
from collections import defaultdict
from pathlib import Path

SETS = ("calibration", "facts", "requests", "small_talk", "other", "conversation")


def measure(checkpoint: Path, data: Path, out: Path) -> None:
    from tilelli.commands.calibrate import row_signals
    from tilelli.infer import load_decoder

    decoder = load_decoder(checkpoint, "torch", 1, int8=False)
    sets = {}
    for name in SETS:
        rows = [json.loads(line) for line in (data / "eval" / f"{name}.jsonl").read_text().splitlines()]
        sets[name] = (rows, row_signals(decoder, rows))
    out.write_bytes(pickle.dumps({"sets": sets}))


def rates(signals: Path, checkpoint: Path) -> None:
    from tilelli.chat.abstain import AbstainRule

    sets = pickle.loads(signals.read_bytes())["sets"]
    rule = AbstainRule.load(checkpoint)
    print(f"thresholds: detector log-odds {rule.refusal_threshold:.3f}, surprise {rule.surprise_threshold:.3f}")
    refused = defaultdict(list)
    for name in SETS[1:]:
        for row, s in zip(*sets[name], strict=True):
            refused[(row["kind"], row["context"])].append(rule.decide(s).abstain)
    for (kind, context), v in sorted(refused.items()):
        print(f"  {kind:11s} {context:17s} {100 * sum(v) / len(v):5.1f} % ({sum(v)}/{len(v)})")
    rows, sig = sets["calibration"]
    for kind in ("small_talk", "request"):
        top = sorted(((rule.refusal_score(s), s.text_surprise, r["context"], r["prompt"])
                      for r, s in zip(rows, sig, strict=True) if r["kind"] == kind), reverse=True)
        print(f"highest calibration {kind} scores (log-odds, surprise, context, prompt):")
        for score, surprise, context, prompt in top[:8]:
            print(f"  {score:7.3f} {surprise:6.2f} {context:16s} {prompt!r}")


if __name__ == "__main__":
    {"measure": lambda a: measure(Path(a[0]), Path(a[1]), Path(a[2])),
     "rates": lambda a: rates(Path(a[0]), Path(a[1]))}[sys.argv[1]](sys.argv[2:])
