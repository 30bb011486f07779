"""`tilelli calibrate`: the abstain rule of a chat checkpoint, calibrated on held-out requests.

Scores every story request of `eval/calibration.jsonl` (from `tilelli prepare-chat`; disjoint
from the evaluation sets) with the model's probability of the refusal, and stores the split-
conformal threshold for a target false-refusal rate `--alpha` as `abstain.json` beside the
checkpoint (see tilelli.chat.abstain). `tilelli chat` and `tilelli serve` then use it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from tilelli.commands.options import add_engine_arguments
from tilelli.errors import TilelliError


def alpha_value(s: str) -> float:
    v = float(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be in (0, 1)")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", required=True, help="chat checkpoint directory; abstain.json is written into it")
    add("--data", type=Path, required=True, metavar="DIR", help="a `tilelli prepare-chat` output (its eval/)")
    add("--alpha", type=alpha_value, default=0.03,
        help="target false-refusal rate on in-domain requests (default 0.03)")
    add("--out", type=Path, default=None, help="write the rule here instead of beside the checkpoint")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tilelli.model.checkpoint_files import checkpoint_dir

    path = checkpoint_dir(args.checkpoint)
    source = args.data / "eval" / "calibration.jsonl"
    if not source.is_file():
        raise TilelliError(f"{source} does not exist; build the chat set with a current `tilelli prepare-chat`")
    out_dir = args.out or path
    if not out_dir.is_dir():
        raise TilelliError(f"--out {out_dir} is not a directory")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]

    from tilelli.chat.abstain import AbstainRule, conformal_threshold, refusal_scores
    from tilelli.chat.template import turn
    from tilelli.infer import load_decoder
    from tilelli.train.trainer import git_state

    decoder = load_decoder(path, args.engine, args.threads)
    scores = [s.probability for s in refusal_scores(decoder, [turn(r["prompt"]) for r in rows])]
    threshold = conformal_threshold(scores, args.alpha)
    refused = sum(s > threshold for s in scores)
    record = {"command": " ".join(["tilelli", *sys.argv[1:]]), "checkpoint": path.name,
              "calibration": {"file": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                              "requests": len(rows), "refused_at_threshold": refused},
              "git": git_state(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    written = AbstainRule(threshold, args.alpha, record).save(out_dir)
    print(f"abstain when P(refusal) > {threshold:.4f} (alpha {args.alpha}: {refused} of {len(rows)} "
          f"calibration requests above it) -> {written}")
    return 0
