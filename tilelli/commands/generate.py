"""`tilelli generate`: stream text from a checkpoint to the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from tilelli.errors import TilelliError


def _non_negative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def _non_negative_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint or training run directory (default: the shipped tilelli-lite-ternary, "
                             "or $TILELLI_CHECKPOINT)")
    parser.add_argument("--prompt", help="prompt text; without it the prompt is read from stdin (UTF-8)")
    parser.add_argument("--max-new-tokens", type=_non_negative_int, default=256, help="bytes to generate (default 256)")
    parser.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=_non_negative_int, default=0,
                        help="sample among the k likeliest bytes (0 = off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass in (0, 1] (default 0.95)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    parser.add_argument("--stop", action="append", default=[],
                        help=r"stop after this text (repeatable; escapes like \n work); it is kept in the output")
    parser.add_argument("--show-confidence", action="store_true",
                        help="colour bytes by the model's probability (TTY) and print mean/min confidence on stderr")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (text, per-byte confidence, stop reason)")
    parser.add_argument("--threads", type=_non_negative_int, default=0, help="torch CPU threads (0 = torch default)")
    parser.epilog = ("At the model's context limit (max_seq_len bytes, prompt included) generation stops "
                     "and says so on stderr.")


def _read_prompt(args: argparse.Namespace) -> bytes:
    if args.prompt is not None:
        return args.prompt.encode("utf-8", errors="surrogateescape")
    if sys.stdin is None or sys.stdin.isatty():
        raise TilelliError("no prompt: pass --prompt TEXT or pipe text on stdin")
    data = sys.stdin.buffer.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TilelliError(f"stdin is not valid UTF-8 (byte {e.start}); convert it first, e.g. with iconv") from None
    return data


def _shade(prob: float) -> str:
    """ANSI colour for a confidence: red < 0.3 <= yellow < 0.7 <= default."""
    return "\x1b[31m" if prob < 0.3 else "\x1b[33m" if prob < 0.7 else ""


def run(args: argparse.Namespace) -> int:
    from tilelli.checkpoint import default_checkpoint, load
    from tilelli.generate import SamplingConfig, stream

    prompt = _read_prompt(args)
    stops = tuple(s.encode("utf-8").decode("unicode_escape").encode("latin-1") for s in args.stop)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop=stops)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    model = load(args.checkpoint or default_checkpoint())
    gen = stream(model, prompt, cfg)
    out = sys.stdout.buffer
    colour = args.show_confidence and sys.stdout.isatty() and not args.json
    got, probs = bytearray(), []
    if not args.json:
        out.write(prompt)
        out.flush()
    for t in gen:
        got.append(t.byte)
        probs.append(t.prob)
        if not args.json:
            b = bytes([t.byte])
            out.write(_shade(t.prob).encode() + b + b"\x1b[0m" if colour and _shade(t.prob) else b)
            out.flush()
    if args.json:
        print(json.dumps({"prompt": prompt.decode("utf-8", "replace"), "text": got.decode("utf-8", "replace"),
                          "confidence": probs, "stop_reason": gen.stop_reason}))
        return 0
    out.write(b"\n")
    out.flush()
    if gen.stop_reason == "context":
        print(f"[stopped: the model's context of {model.config.max_seq_len} bytes is full]", file=sys.stderr)
    if args.show_confidence and probs:
        print(f"[confidence: mean {sum(probs) / len(probs):.3f}, min {min(probs):.3f} over {len(probs)} bytes]",
              file=sys.stderr)
    return 0
