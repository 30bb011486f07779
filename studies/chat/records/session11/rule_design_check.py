"""Session 11's design check of the abstain rule's calibration, on signals measured once.

Step 1 (`measure`): both readings of every held-out and calibration prompt of a chat set (the
turn in its conversation and alone; the detector's log-odds and the surprise of each), with the
shipped checkpoint's detector (the one `tilelli calibrate` re-fits, identically, from the same
data). Step 2 (`simulate`): thresholds calibrated on the calibration prompts as each variant
would, the held-out refusal rates that follow, by kind and context:
- surprise of the higher reading (session 10) or of the turn read alone;
- the calibration pooled over requests and small talk, or per kind (Mondrian: the rule takes the
  highest kind's thresholds);
- alpha split evenly between the two thresholds, or 2/3 to the refusal score;
- (`--per-kind-alpha`) each kind's alpha its issue-23 target: requests 3 %, small talk 5 %.

    cd studies/chat/records/session11   # with the repository root on PYTHONPATH
    python rule_design_check.py measure NAME --data ~/tl/data/chat5 --out S.json
    python rule_design_check.py simulate S.json [--per-kind-alpha]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from tilelli.chat.abstain import conformal_threshold

KINDS = ["fact", "request", "small_talk", "follow_up", "gibberish", "language", "code", "arithmetic"]
CONTEXTS = ["single", "after_story", "after_refusal", "after_small_talk"]
ALPHA = 0.03


def measure(name: str, data: Path, out: Path) -> None:
    from tilelli.chat.abstain import AbstainRule
    from tilelli.chat.abstain import measure as signals_of
    from tilelli.chat.session import conversation_prompt
    from tilelli.infer import load_decoder
    from tilelli.model.checkpoint_files import SHIPPED_DIR

    rows = [json.loads(line) for f in ("conversation", "small_talk", "requests", "facts", "other")
            for line in (data / "eval" / f"{f}.jsonl").open()]
    rows = [{**r, "context": r.get("context", "single"), "cal": False} for r in rows]
    rows += [{**json.loads(line), "cal": True} for line in (data / "eval" / "calibration.jsonl").open()]
    decoder = load_decoder(SHIPPED_DIR / name, "torch", 1)
    rule = AbstainRule.load(SHIPPED_DIR / name)
    prompts = [conversation_prompt([tuple(t) for t in r["history"]], r["prompt"], decoder.max_seq_len)[0]
               for r in rows]
    out_rows = []
    for r, s in zip(rows, signals_of(decoder, prompts), strict=True):
        rec = {"cal": r["cal"], "kind": r["kind"], "context": r["context"], "prompt": r["prompt"],
               "conv_score": rule.reading_score(s), "conv_surprise": s.surprise}
        if s.alone is not None:
            rec.update(alone_score=rule.reading_score(s.alone), alone_surprise=s.alone.surprise)
        out_rows.append(rec)
    out.write_text(json.dumps({"checkpoint": name, "rows": out_rows}))


def score(r: dict) -> float:
    return max(r["conv_score"], r.get("alone_score", -math.inf))


def surprise_higher(r: dict) -> float:
    return max(r["conv_surprise"], r.get("alone_surprise", -math.inf))


def surprise_alone(r: dict) -> float:
    return r.get("alone_surprise", r["conv_surprise"])


def simulate(path: Path, per_kind_alpha: bool) -> None:
    rows = json.loads(path.read_text())["rows"]
    cal, held_out = [r for r in rows if r["cal"]], [r for r in rows if not r["cal"]]
    for s_name, surprise in (("higher reading", surprise_higher), ("alone", surprise_alone)):
        for per_kind in (True,) if per_kind_alpha else (False, True):
            for share in (0.5, 0.67):
                alphas = ({"request": 0.03, "small_talk": 0.05} if per_kind_alpha else
                          {"request": ALPHA, "small_talk": ALPHA} if per_kind else {None: ALPHA})

                def threshold(f, a_share, alphas=alphas):
                    return max(conformal_threshold([f(r) for r in cal if k is None or r["kind"] == k], a * a_share)
                               for k, a in alphas.items())

                t_r, t_s = threshold(score, share), threshold(surprise, 1 - share)
                counts = defaultdict(lambda: [0, 0])
                for r in held_out:
                    c = counts[r["kind"], r["context"]]
                    c[0] += 1
                    c[1] += score(r) > t_r or surprise(r) > t_s
                print(f"surprise {s_name}, {'per kind' if per_kind else 'pooled'}, refusal share {share}: "
                      f"t_r {t_r:.3f} t_s {t_s:.3f}   (% refused: {', '.join(CONTEXTS)})")
                for kind in KINDS:
                    cells = [f"{100 * counts[kind, c][1] / counts[kind, c][0]:7.1f}" if counts[kind, c][0]
                             else "      -" for c in CONTEXTS]
                    print(f"   {kind:11s}" + "".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("simulate")
    s.add_argument("signals", type=Path)
    s.add_argument("--per-kind-alpha", action="store_true")
    args = ap.parse_args()
    if args.step == "measure":
        measure(args.name, args.data, args.out)
    else:
        simulate(args.signals, args.per_kind_alpha)


if __name__ == "__main__":
    main()
