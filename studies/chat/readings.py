"""Why the chat rule reads the last turn twice: every held-out third turn after a story, in its
conversation and alone (`tilelli.chat.abstain.Signals.alone`).

For each kind (facts and unreadable text that should be refused; requests, small talk and
follow-ups that should be answered): the median P(refusal) of each reading, and how many of the
turns each reading alone, and either of them (what the rule does), would refuse at the
checkpoint's calibrated threshold. Refusal scores only: the surprise threshold, and sampling,
are left out, so this isolates what the second reading adds; `studies.chat.evaluate` gives the
rule's whole decision.

    python -m studies.chat.readings --checkpoint checkpoints/tilelli-chat-lite-ternary --data ~/tl/data/chat3
    python -m studies.chat.readings ... --check   # re-measure; exit 1 unless every rate is within 2 turns
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from studies.common import add_output_args, publish, results_dir, shown
from tilelli.chat.abstain import AbstainRule, measure
from tilelli.chat.session import conversation_prompt
from tilelli.infer import load_decoder
from tilelli.model.checkpoint_files import checkpoint_dir

KINDS = ("fact", "code", "language", "gibberish", "arithmetic", "request", "small_talk", "follow_up")


def measure_readings(checkpoint: Path, data: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    path = checkpoint_dir(checkpoint)
    rule = AbstainRule.load(path)
    if rule is None:
        sys.exit(f"{path} has no abstain rule; run `tilelli calibrate` first")
    decoder = load_decoder(path, "torch", threads)
    rows = [json.loads(line) for line in (data / "eval" / "conversation.jsonl").read_text().splitlines()]
    kinds = {}
    for kind in KINDS:
        picked = [r for r in rows if r["kind"] == kind and r["context"] == "after_story"]
        prompts = [conversation_prompt([tuple(t) for t in r["history"]], r["prompt"], decoder.max_seq_len)[0]
                   for r in picked]
        signals = [s for s in measure(decoder, prompts) if s.alone is not None]
        context = [rule.reading_score(s) > rule.refusal_threshold for s in signals]
        alone = [rule.reading_score(s.alone) > rule.refusal_threshold for s in signals]
        kinds[kind] = {"n": len(signals),
                       "median_refusal": {"in_context": float(np.nanmedian([s.refusal for s in signals])),
                                          "alone": float(np.nanmedian([s.alone.refusal for s in signals]))},
                       "refused": {"in_context": sum(context), "alone": sum(alone),
                                   "either": sum(a or b for a, b in zip(context, alone, strict=True))}}
    return {"checkpoint": path.name, "refusal_threshold": rule.refusal_threshold,
            "detector": rule.detector is not None, "kinds": kinds}


def markdown(result: dict) -> str:
    lines = ["# The last turn read twice: after a story, in its conversation and alone", "",
             f"`{result['checkpoint']}`, every held-out third turn after a story "
             f"(`eval/conversation.jsonl`); refused = the reading's refusal score "
             f"({'detector log-odds' if result['detector'] else 'P(refusal)'}) above the calibrated "
             f"{result['refusal_threshold']:.3f}. `python -m studies.chat.readings`.", "",
             "| kind | n | median P(refusal) in conversation | alone | refused in conversation | alone "
             "| either (the rule) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, k in result["kinds"].items():
        m, r, n = k["median_refusal"], k["refused"], k["n"]
        lines.append(f"| {kind} | {n} | {m['in_context']:.3f} | {m['alone']:.3f} | "
                     + " | ".join(f"{100 * r[w] / n:.1f} %" for w in ("in_context", "alone", "either")) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/tilelli-chat-lite-ternary"))
    parser.add_argument("--data", type=Path, required=True, help="the chat set of `tilelli prepare-chat`")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="re-measure and compare with the published record")
    add_output_args(parser, results_dir(__file__))
    args = parser.parse_args()
    result = measure_readings(args.checkpoint, args.data, args.threads)
    if args.check:
        published = json.loads((args.out / "readings.json").read_text())
        bad = [f"{kind} {w}: {k['refused'][w]} now, {published['kinds'][kind]['refused'][w]} published"
               for kind, k in result["kinds"].items() for w in k["refused"]
               if abs(k["refused"][w] - published["kinds"][kind]["refused"][w]) > 2]
        print("\n".join(bad) or "readings: every count within 2 turns of the record")
        sys.exit(1 if bad else 0)
    publish(args, "readings", result, markdown(result))
    print(markdown(result))
    print(f"-> {shown(args.out / 'readings.json')}")


if __name__ == "__main__":
    main()
