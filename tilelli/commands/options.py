"""Options that `tilelli generate` and `tilelli chat` (and `serve`) share: sampling, engine,
threads, and the chat's abstain rule."""

from __future__ import annotations

import argparse
from typing import Any


def non_negative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def non_negative_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def probability(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{v} must be in (0, 1]")
    return v


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float,
                           top_p: float) -> None:
    """--max-new-tokens, --temperature, --top-k, --top-p, --seed with the caller's defaults."""
    add = parser.add_argument
    add("--max-new-tokens", type=non_negative_int, default=max_new_tokens,
        help=f"bytes to generate at most (default {max_new_tokens})")
    add("--temperature", type=non_negative_float, default=temperature, help=f"0 = greedy (default {temperature})")
    add("--top-k", type=non_negative_int, default=0, help="sample among the k likeliest bytes (0 = off)")
    add("--top-p", type=probability, default=top_p, help=f"nucleus sampling mass in (0, 1] (default {top_p})")
    add("--seed", type=int, default=None, help="random seed for reproducible sampling")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("auto", "native", "torch"), default="auto",
                        help="auto: the native engine when it can run the model, else PyTorch (default); "
                             "torch: the PyTorch reference path")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="CPU threads (0 = all available)")


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
