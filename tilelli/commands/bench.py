"""`tilelli bench`: decode speed of a checkpoint against the plain PyTorch GPT, in one process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tilelli.commands.options import add_int8_argument, add_threads_argument, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint or run directory (default: the shipped tilelli-lite-ternary)")
    add_threads_argument(parser, zero="all CPUs, for every path")
    add_int8_argument(parser)
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed runs per figure, median reported (default 5)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.epilog = ("Pause other work while it runs: every figure is measured in this one process, so the "
                     "ratios hold on a noisy machine, but the absolute bytes/s do not.")


def run(args: argparse.Namespace) -> int:
    import os

    from tilelli.model.checkpoint_files import checkpoint_dir, default_checkpoint

    path = checkpoint_dir(args.checkpoint or default_checkpoint())
    threads = args.threads or len(os.sched_getaffinity(0))
    from tilelli.infer.bench import markdown, run_all

    prefill = (b"Once upon a time, there was a little dog. " * 30)[:1000]
    result = run_all([Path(path)], threads, args.repeats, prefill, startup_checkpoint=Path(path), int8=args.int8)
    print(json.dumps(result, indent=1) if args.json else markdown(result), end="" if not args.json else "\n")
    return 0
