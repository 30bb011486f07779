"""`tilelli calibrate`: the abstain rule of a chat checkpoint, calibrated on answerable prompts.

First fits the rule's refusal detector (tilelli.chat.detector) on `--detector-prompts` turns of
the chat set's own training stream (`train.bin`: the turns the model was fine-tuned on, labelled
by whether their reply was a refusal) and on the set's fresh turns (`detector.jsonl`: questions
of the training split the fine-tuning never used, new requests and small talk; labelled by
`refuse`), so that it learns where new questions fall, not only memorised ones. Then measures
both scores of the rule (the detector's log-odds and the surprise; tilelli.chat.abstain) on
every prompt of `eval/calibration.jsonl` (from `tilelli prepare-chat`: story requests and small
talk in phrasings never trained on, alone and as third turns; disjoint from the evaluation
sets), as a session would build it, and stores the split-conformal thresholds for a bound
`--alpha` on the false refusals of each kind (requests, small talk; one for all or each its own)
as `abstain.json` beside the checkpoint. `tilelli chat` and
`tilelli serve` then use it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tilelli.commands.options import add_engine_arguments, int_range
from tilelli.errors import TilelliError


def alpha_value(s: str) -> float | dict[str, float]:
    """One alpha for every kind ("0.05"), or each kind's ("request=0.03,small_talk=0.05")."""
    def one(v: str) -> float:
        try:
            a = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
        if not 0 < a < 1:
            raise argparse.ArgumentTypeError(f"{a} must be in (0, 1)")
        return a

    if "=" not in s:
        return one(s)
    pairs = [part.partition("=") for part in s.split(",")]
    if any(not kind.strip() or not eq for kind, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"{s!r}: give KIND=ALPHA pairs separated by commas, "
                                         "e.g. request=0.03,small_talk=0.05")
    return {kind.strip(): one(v) for kind, _, v in pairs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", required=True, help="chat checkpoint directory; abstain.json is written into it")
    add("--data", type=Path, required=True, metavar="DIR", help="a `tilelli prepare-chat` output (its eval/)")
    add("--alpha", type=alpha_value, default=0.03,
        help="bound on the false-refusal rate of each kind of answerable prompt (story requests, small "
             "talk), split evenly between the two thresholds: one number for every kind (default 0.03), or "
             "KIND=ALPHA pairs, e.g. request=0.03,small_talk=0.05")
    add("--detector-prompts", type=int_range(0, 100_000), default=3000, metavar="N",
        help="training turns the refusal detector is fitted on (default 3000); 0: no detector, the rule "
             "thresholds the model's probability of the refusal itself")
    add("--out", type=Path, default=None, help="write the rule here instead of beside the checkpoint")
    add_engine_arguments(parser, int8=False)  # signals are read on the float path (abstain.measure)


def row_signals(decoder: Any, rows: list[dict], alone: bool = True) -> list[Any]:
    """The rule's signals for held-out rows ({"prompt", "history"}), on the prompts a chat session
    would build for them."""
    from tilelli.chat.abstain import measure
    from tilelli.chat.session import conversation_prompt

    return measure(decoder, [conversation_prompt([tuple(t) for t in r.get("history", [])], r["prompt"],
                                                 decoder.max_seq_len)[0] for r in rows], alone=alone)


def run(args: argparse.Namespace) -> int:
    from tilelli.model.checkpoint_files import checkpoint_dir

    path = checkpoint_dir(args.checkpoint)
    source = args.data / "eval" / "calibration.jsonl"
    if not source.is_file():
        raise TilelliError(f"{source} does not exist; build the chat set with a current `tilelli prepare-chat`")
    out_dir = args.out or path
    if not out_dir.is_dir():
        raise TilelliError(f"--out {out_dir} is not a directory")
    train = args.data / "train.bin"
    if args.detector_prompts and not train.is_file():
        raise TilelliError(f"{train} does not exist; the detector is fitted on the chat set's training turns "
                           "(or pass --detector-prompts 0)")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if isinstance(args.alpha, dict):  # checked before the minutes of fitting, not after
        have = sorted({r.get("kind", "request") for r in rows})
        if sorted(args.alpha) != have:
            raise TilelliError(f"--alpha names the kinds {', '.join(sorted(args.alpha))}; {source.name} has "
                               f"{', '.join(have)}: give one alpha for each (or one number for all)")

    from tilelli.chat.abstain import AbstainRule
    from tilelli.infer import load_decoder
    from tilelli.train.trainer import git_state

    decoder = load_decoder(path, args.engine, args.threads, int8=False)
    detector = fit_detector(decoder, train, args.detector_prompts) if args.detector_prompts else None
    signals = row_signals(decoder, rows)
    row_kinds = [r.get("kind", "request") for r in rows]
    prompts = Counter(row_kinds)
    kinds = sorted(prompts)
    record = {"command": " ".join(["tilelli", *sys.argv[1:]]), "checkpoint": path.name,
              "calibration": {"file": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                              "prompts": len(rows), "kinds": {k: prompts[k] for k in kinds}},
              "git": git_state(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rule = AbstainRule.calibrate(signals, args.alpha, record, detector, row_kinds)
    abstained = Counter(k for s, k in zip(signals, row_kinds, strict=True) if rule.decide(s).abstain)
    refused = {k: abstained[k] for k in kinds}
    record["calibration"]["refused_at_thresholds"] = refused
    written = rule.save(out_dir)
    score = "P(refusal)" if detector is None else "the detector's log-odds"
    counts = ", ".join(f"{refused[k]} of {prompts[k]} {k}" for k in kinds)
    alphas = ", ".join(f"{k} {rule.record['by_kind'][k]['alpha']:g}" for k in kinds)
    print(f"abstain when {score} > {rule.refusal_threshold:.4f} or surprise > {rule.surprise_threshold:.3f} "
          f"bits/byte (alpha {alphas}, half of it per threshold; calibration prompts refused: {counts}) "
          f"-> {written}")
    return 0


def fit_detector(decoder: Any, train: Path, n: int) -> Any:
    """The refusal detector, fitted on n turns of the training stream `train` and on the fresh
    turns of `detector.jsonl` beside it (a chat set from before it was added has none)."""
    import numpy as np

    from tilelli.chat.dataset import DETECTOR_FILE
    from tilelli.chat.detector import Detector, training_turns

    stream = train.read_bytes()
    rows = [{"history": h, "prompt": t, "refuse": refused} for h, t, refused in training_turns(stream, n)]
    n_train, fresh = len(rows), train.parent / DETECTOR_FILE
    if fresh.is_file():
        rows += [json.loads(line) for line in fresh.read_text(encoding="utf-8").splitlines() if line.strip()]
    signals = row_signals(decoder, rows, alone=False)  # the fit reads each turn in its conversation
    keep = [i for i, s in enumerate(signals) if s.features]  # prompts too long to score are left out
    x = np.array([signals[i].features for i in keep])
    refused = np.array([bool(rows[i]["refuse"]) for i in keep])
    record = {"file": train.name, "sha256": hashlib.sha256(stream).hexdigest(), "training_turns": n_train}
    if fresh.is_file():
        record["fresh"] = {"file": fresh.name, "sha256": hashlib.sha256(fresh.read_bytes()).hexdigest(),
                           "turns": len(rows) - n_train}
    detector = Detector.fit(x, refused, record)
    print(f"detector: {len(keep)} turns ({int(refused.sum())} refused), cross-validated AUROC "
          f"{detector.record['cv_auroc']:.4f}", file=sys.stderr)
    return detector
