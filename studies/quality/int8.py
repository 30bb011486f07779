"""What the integer path costs in bpb (issue 26): each shipped ternary checkpoint scored on the
whole TinyStories valid slice twice, on the exact float path and with its ternary layers taking
int8 inputs (`tilelli eval --int8`, `use_int8_inputs`), over the same 256-byte windows.

The paired difference (int8 minus float, per window) gets its own bootstrap interval: both
scores share every window, so their difference is known far better than two separate intervals
say. The integer path may become the default only where it costs <= 0.3 % bpb and the chat
decisions do not change: with `--chat-data` (a `tilelli prepare-chat` output), the shipped ternary
chat model's abstain rule decides every held-out evaluation prompt (alone and in conversation)
on both paths, and the prompts decided differently are counted.

    python -m studies.quality.int8 --chat-data ~/tl/data/chat3   # results/int8.json, docs/results/int8.md
    python -m studies.quality.int8 --check --chat-data ...        # re-measures, exits 1 when a number moved
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from studies.checker import Checker
from studies.common import SHARED, VALID_TEXT, add_output_args, publish, results_dir
from tilelli.model.checkpoint import SHIPPED_DIR, load
from tilelli.model.ternary import use_int8_inputs
from tilelli.train.evaluate import bootstrap_ci, window_losses

RESULTS = results_dir(__file__)
CHECKPOINTS = ("tilelli-lite-ternary", "tilelli-chat-lite-ternary")
CHAT = "tilelli-chat-lite-ternary"
SEQ_LEN, BATCH, RESAMPLES = 256, 16, 1000
TARGET = 0.003  # the most the default path may cost, relative


def paired_ci(float_sums: np.ndarray, int8_sums: np.ndarray, counts: np.ndarray, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of bpb(int8) - bpb(float), resampling whole windows for both."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(RESAMPLES, len(counts)))  # (R, W)
    diff = (int8_sums[picks].sum(1) - float_sums[picks].sum(1)) / counts[picks].sum(1) / math.log(2)
    return [float(v) for v in np.percentile(diff, [2.5, 97.5])]


def measure(name: str) -> dict:
    model = load(SHIPPED_DIR / name)
    scores = {}
    for path in ("float", "int8"):
        use_int8_inputs(model, path == "int8")
        sums, counts = window_losses(model, VALID_TEXT, BATCH, SEQ_LEN)
        lo, hi = bootstrap_ci(sums, counts, RESAMPLES)
        scores[path] = {"sums": sums, "bpb": float(sums.sum() / counts.sum() / math.log(2)),
                        "bpb_ci": [lo / math.log(2), hi / math.log(2)]}
    f, i = scores["float"], scores["int8"]
    return {"checkpoint": name, "bytes": int(counts.sum()), "windows": len(counts),
            "float_bpb": f["bpb"], "float_ci": f["bpb_ci"], "int8_bpb": i["bpb"], "int8_ci": i["bpb_ci"],
            "difference": i["bpb"] - f["bpb"], "difference_ci": paired_ci(f["sums"], i["sums"], counts),
            "relative": (i["bpb"] - f["bpb"]) / f["bpb"]}


def decisions(data: Path) -> dict:
    """The chat rule's decisions on every evaluation prompt, float path vs integer path."""
    from studies.chat.evaluate import SETS
    from tilelli.chat.abstain import AbstainRule, measure
    from tilelli.chat.session import conversation_prompt
    from tilelli.infer import load_decoder

    chat = SHIPPED_DIR / CHAT
    rule = AbstainRule.load(chat)
    rows = [json.loads(line) for s in SETS for line in (data / "eval" / f"{s}.jsonl").read_text().splitlines()]
    decided = {}
    for int8 in (False, True):
        decoder = load_decoder(chat, "torch", int8=int8)
        prompts = [conversation_prompt([tuple(t) for t in r["history"]], r["prompt"], decoder.max_seq_len)[0]
                   for r in rows]
        decided[int8] = [rule.decide(s).abstain for s in measure(decoder, prompts, on_float=False)]
    changed = [i for i, (a, b) in enumerate(zip(decided[False], decided[True], strict=True)) if a != b]
    return {"checkpoint": CHAT, "prompts": len(rows), "abstained_float": sum(decided[False]),
            "abstained_int8": sum(decided[True]), "changed": len(changed),
            "changed_kinds": sorted({f"{rows[i]['kind']}/{rows[i]['context']}" for i in changed})}


def markdown(rows: list[dict], chat: dict | None = None) -> str:
    lines = ["# The integer path's cost in bpb", "",
             f"Each shipped ternary checkpoint on the whole TinyStories valid slice ({rows[0]['bytes']:,} bytes, "
             f"{rows[0]['windows']} windows of {SEQ_LEN} bytes), on the exact float path and with ternary layers "
             "taking int8 inputs (`tilelli eval --int8`). The difference is paired (same windows; 95 % bootstrap "
             f"interval). The integer path may be a default only where it costs <= {TARGET:.1%}. Written by "
             "`python -m studies.quality.int8`.", "",
             "| checkpoint | float bpb | int8 bpb | int8 - float (95 % CI) | relative |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["difference_ci"]
        lines.append(f"| `{r['checkpoint']}` | {r['float_bpb']:.4f} | {r['int8_bpb']:.4f} | "
                     f"{r['difference']:+.4f} ({lo:+.4f} to {hi:+.4f}) | {r['relative']:+.2%} |")
    if chat is not None:
        kinds = ", ".join(chat["changed_kinds"]) or "none"
        lines += ["", f"Chat decisions of `{chat['checkpoint']}` (its calibrated rule, signals from the PyTorch path) "
                  f"on the {chat['prompts']:,} held-out evaluation prompts, alone and in conversation: "
                  f"{chat['abstained_float']:,} abstentions on the float path, {chat['abstained_int8']:,} on the "
                  f"integer path; **{chat['changed']} prompts decided differently** (kinds: {kinds})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="re-measure and compare with the published record")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chat-data", type=Path, default=None,
                    help="a `tilelli prepare-chat` output: also compare the chat model's decisions")
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    if not VALID_TEXT.is_file():
        print(f"needs {VALID_TEXT.relative_to(SHARED.parent)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = [measure(name) for name in CHECKPOINTS]
    chat = decisions(args.chat_data) if args.chat_data else None
    if not args.check:
        publish(args, "int8", {"study": "int8", "seq_len": SEQ_LEN, "target_relative": TARGET, "rows": rows,
                               "chat_decisions": chat}, markdown(rows, chat))
        print(markdown(rows, chat))
        return 0
    checker = Checker()
    published = json.loads((RESULTS / "int8.json").read_text())
    for pub, got in zip(published["rows"], rows, strict=True):
        for key in ("float_bpb", "int8_bpb"):
            checker.check(f"{pub['checkpoint']} {key}", pub[key], got[key], 1e-4)
    if chat is not None and published.get("chat_decisions"):
        checker.check("chat prompts decided differently", published["chat_decisions"]["changed"], chat["changed"])
    checker.page("int8", markdown(published["rows"], published.get("chat_decisions")))
    return checker.finish("int8 cost")


if __name__ == "__main__":
    sys.exit(main())
