"""Command-line option types and the options that several commands share.

Every numeric option has a stated range, checked by argparse while it parses, so a bad value
is one line and exit code 2 before anything heavy (torch, a checkpoint) loads:

- counts (`--max-new-tokens`, `--top-k`, `--bootstrap`, ...): integers in their range;
- real numbers (`--temperature`, `--top-p`, `--max-change`, ...): finite (nan and inf are
  refused: they pass every `<` test the wrong way) and in their range;
- `--threads`: 0 = choose automatically, else 1 .. the machine's CPU count; more is clamped to
  the CPU count with a one-line note (a script written for a larger machine still runs, and an
  OpenMP pool of 100,000 threads is a crash, not a speed-up);
- `--seed`: 0 .. 2**32 - 1 (`tilelli.limits`, shared with the server and the library). There is
  no "-1 = random" convention: leaving `--seed` out of a sampling command gives a fresh random
  seed, and the commands that must be redoable (train, eval, prepare) have a fixed default.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from tilelli.limits import SEED_MAX, cpu_count


def _number(s: str, kind: type) -> Any:
    try:
        return kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (no upper bound when hi is None)."""

    def parse(s: str) -> int:
        v = _number(s, int)
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} must be >= {lo}" if hi is None else f"{v} must be in {lo}..{hi}")
        return v

    return parse


def float_range(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] ((lo, hi] with `lo_open`)."""

    def parse(s: str) -> float:
        v = _number(s, float)
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else \
                f"{'>' if lo_open else '>='} {lo:g}"
            raise argparse.ArgumentTypeError(f"{s} must be a finite number {'in ' if math.isfinite(hi) else ''}{span}")
        return v

    return parse


non_negative_int = int_range(0)
positive_int = int_range(1)
probability = float_range(0.0, 1.0, lo_open=True)
seed = int_range(0, SEED_MAX)


def threads(s: str) -> int:
    """An argparse type for --threads: 0 (automatic) or 1 .. the CPU count; more is clamped, with a note."""
    v = int_range(0)(s)
    cpus = cpu_count()
    if v > cpus:
        from tilelli.kernels.build import note

        note(f"--threads {v} is more than the {cpus} CPUs of this machine; using {cpus}")
        return cpus
    return v


def add_threads_argument(parser: argparse.ArgumentParser, default: int = 0, zero: str = "all available") -> None:
    """--threads, the same range for every command; `zero` says what 0 means to this one."""
    parser.add_argument("--threads", type=threads, default=default,
                        help=f"CPU threads: 0 = {zero}, else 1 .. the CPU count (more are clamped; default {default})")


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float,
                           top_p: float) -> None:
    """--max-new-tokens, --temperature, --top-k, --top-p, --seed with the caller's defaults."""
    add = parser.add_argument
    add("--max-new-tokens", type=non_negative_int, default=max_new_tokens,
        help=f"bytes to generate at most (default {max_new_tokens})")
    add("--temperature", type=float_range(0.0), default=temperature,
        help=f"finite, >= 0; 0 = greedy (default {temperature})")
    add("--top-k", type=non_negative_int, default=0, help="sample among the k likeliest bytes (0 = off)")
    add("--top-p", type=probability, default=top_p, help=f"nucleus sampling mass in (0, 1] (default {top_p})")
    add("--seed", type=seed, default=None,
        help=f"random seed 0..{SEED_MAX} for reproducible sampling (leave it out for a random one)")


def add_engine_arguments(parser: argparse.ArgumentParser, int8: bool = True) -> None:
    """--engine and --threads, and --int8 / --no-int8 unless `int8` is off (a command that reads
    only the float path, as calibration does)."""
    parser.add_argument("--engine", choices=("auto", "native", "torch"), default="auto",
                        help="auto: the native engine when it can run the model, else PyTorch (default); "
                             "torch: the PyTorch reference path")
    if int8:
        add_int8_argument(parser)
    add_threads_argument(parser)


def add_int8_argument(parser: argparse.ArgumentParser, default: str = "ternary") -> None:
    """`default`: "ternary" (the integer path for ternary models unless --no-int8) or "float"."""
    if default == "ternary":
        parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                            help="the integer path: ternary layers take inputs quantized to int8 per byte "
                                 "(the default for ternary models: 0.02%% bpb, docs/engine.md; "
                                 "--no-int8: the exact float path; a chat's decision is read on it either way)")
    else:
        parser.add_argument("--int8", action="store_true",
                            help="the integer path: ternary layers take inputs quantized to int8 per byte "
                                 "(default: the exact float path)")


def abstain_threshold(s: str) -> float | str:
    if s == "greedy":
        return s
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} must be in [0, 1], or 'greedy'")
    return v


def add_abstain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--abstain-threshold", type=abstain_threshold, default=None, metavar="P",
                        help="refuse when the model's probability of the refusal exceeds P (default: the "
                             "threshold `tilelli calibrate` stored beside the checkpoint); 'greedy': "
                             "refuse only when the generated reply is the refusal")


def abstain_rule(value: float | str | None, checkpoint_dir: Any) -> Any:
    """The AbstainRule the options ask for (None = the generated reply decides)."""
    from tilelli.chat.abstain import AbstainRule

    if value == "greedy":
        return None
    if value is not None:
        return AbstainRule(float(value))
    return AbstainRule.load(checkpoint_dir)
