"""Re-check studies/chat/results/chat.json (docs/results/chat.md and the README's chat columns) from the
shipped chat checkpoints: rebuild the held-out sets from ../shared/data, re-calibrate, re-run
every measurement, compare; and check the issue-23 targets the README states.

Tolerances: each model's thresholds, re-calibrated (over the shipped refusal detector), within
0.1 (the detector's log-odds; 0.01 for a rule on the refusal probability) and 0.05 bits per byte
(surprise); every refusal rate (kind x context) within 3 points; reply bpb within
0.5 %; AUROCs within 0.01 (float sums and seeded sampling may differ slightly between CPUs and
instruction sets). Exactly: the data hashes, the held-out sizes, zero answers quoting a refusal
and zero invalid UTF-8, and the scripted conversations' replies (same CPU class);
docs/results/chat.md must equal what chat.json renders to. Targets (on the published numbers
and on the re-measured ones; reported, and failures only with --targets, since the README states
the measured rates and which targets are not reached):
facts refused >= 97 %, story requests refused <= 3 %, small talk <= 5 %, each unservable kind
>= 95 %, every conversation rate within 3 points of its single-turn rate, for the default
(ternary) model. Exits 1 and names every number that does not reproduce or target that is not
met. About 10 minutes per model on 2 CPU cores.

    python -m studies.chat.check [--model NAME] [--targets]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from studies.chat.evaluate import CONTEXTS, RESULTS, measure_model, page_of
from studies.checker import Checker
from studies.common import DOCS, ROOT, SHARED
from tilelli.chat.abstain import AbstainRule
from tilelli.chat.dataset import build
from tilelli.commands.calibrate import row_signals
from tilelli.infer import load_decoder

RATE, BPB, AUROC, REFUSAL_T, LOG_ODDS_T, SURPRISE_T = 0.03, 0.005, 0.01, 0.01, 0.1, 0.05
DEFAULT = "tilelli-chat-lite-ternary"
TARGETS = {"fact": (">=", 0.97), "request": ("<=", 0.03), "small_talk": ("<=", 0.05), "gibberish": (">=", 0.95),
           "language": (">=", 0.95), "code": (">=", 0.95), "arithmetic": (">=", 0.95)}


def targets(checker: Checker, row: dict, label: str, gate: bool) -> None:
    """The issue-23 targets on one model's rates (single turn, and conversation vs single): a line
    each, met or not reached; failures of the check only with `gate` (--targets), since the README
    claims the measured rates, not the targets."""
    def target(what: str, met: bool) -> None:
        if gate:
            checker.check(what, True, met)
        else:
            print(f"{'met' if met else 'NOT REACHED':11} target: {what}")

    for kind, (op, bound) in TARGETS.items():
        d = row["refused"][kind]
        single = d["single"]["rate"]
        target(f"{label}: {kind} refused {op} {bound:.0%} (single turn: {single:.3f})",
               single >= bound if op == ">=" else single <= bound)
        for c in CONTEXTS[1:]:
            if d[c]["n"]:
                target(f"{label}: {kind} {c} within 3 points of single ({d[c]['rate']:.3f} vs {single:.3f})",
                       abs(d[c]["rate"] - single) <= 0.03 + 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="re-measure only this model (default: every published one)")
    ap.add_argument("--targets", action="store_true", help="also fail when an issue-23 target is not met")
    args = ap.parse_args()
    checker = Checker()
    published = json.loads((RESULTS / "chat.json").read_text())
    pubs = [p for p in published["models"] if args.model in (None, p["name"])]
    for pub in pubs:
        if pub["name"] == DEFAULT:
            targets(checker, pub, f"{pub['name']} (published)", args.targets)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat"
        meta = build(SHARED, data)
        checker.check("chat set train sha256", published["data"]["train_sha256"], meta["train"]["sha256"])
        checker.check("held-out sizes", published["data"]["held_out"], meta["held_out"])
        cal = [json.loads(line) for line in (data / "eval" / "calibration.jsonl").read_text().splitlines()]
        for pub in pubs:
            name, ckpt = pub["name"], ROOT / pub["checkpoint"]
            if pub["rule"] is not None:  # the thresholds, re-calibrated over the shipped detector
                shipped = AbstainRule.load(ckpt)
                rule = AbstainRule.calibrate(row_signals(load_decoder(ckpt, "torch"), cal), pub["rule"]["alpha"], {},
                                             shipped.detector if shipped else None, [r["kind"] for r in cal])
                checker.check(f"{name} refusal threshold", pub["rule"]["refusal_threshold"], rule.refusal_threshold,
                              REFUSAL_T if rule.detector is None else LOG_ODDS_T, absolute=True)
                checker.check(f"{name} surprise threshold", pub["rule"]["surprise_threshold"],
                              rule.surprise_threshold, SURPRISE_T, absolute=True)
            now = measure_model(name, ckpt, ROOT / pub["base"], data, 0)
            for kind, by_context in pub["refused"].items():
                for c, r in by_context.items():
                    if r["n"]:
                        checker.check(f"{name} {kind} {c}", r["rate"], now["refused"][kind][c]["rate"], RATE,
                                      absolute=True)
            for count in ("answers_leaking_refusal", "answers_invalid_utf8"):
                checker.check(f"{name} {count}", 0, now[count])
            for side in ("chat", "base"):
                checker.check(f"{name} reply bpb ({side})", pub["reply_bpb"][side]["bpb"],
                              now["reply_bpb"][side]["bpb"], BPB)
            for signal, value in pub["auroc"].items():
                checker.check(f"{name} {signal} AUROC", value, now["auroc"][signal], AUROC, absolute=True)
            for s_pub, s_now in zip(pub["script"], now["script"], strict=True):
                checker.check(f"{name} conversation '{s_pub['prompt'][:24]}' identical", s_pub["reply"], s_now["reply"])
            if name == DEFAULT:
                targets(checker, now, f"{name} (re-measured)", args.targets)
    checker.check("docs/results/chat.md = chat.json", True, (DOCS / "chat.md").read_text() == page_of(published))
    return checker.finish("chat")


if __name__ == "__main__":
    sys.exit(main())
