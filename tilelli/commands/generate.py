"""`tilelli generate`: stream text from a checkpoint to the terminal.

Everything is checked before the model loads, and the default path never imports torch: the
native engine reads the checkpoint with numpy, so the first byte is on screen a fraction of a
second after the command starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from tilelli.commands.options import add_engine_arguments, add_sampling_arguments
from tilelli.errors import Interrupted, TilelliError
from tilelli.infer.generate import TEXT_SAMPLING
from tilelli.limits import utf8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint or training run directory (default: the shipped tilelli-lite-ternary, "
                             "or $TILELLI_CHECKPOINT)")
    parser.add_argument("--prompt", help="prompt text; without it the prompt is read from stdin (either must be "
                                         "valid UTF-8: a byte that is not is an error, never replaced)")
    add_sampling_arguments(parser, max_new_tokens=TEXT_SAMPLING.max_new_tokens, temperature=TEXT_SAMPLING.temperature,
                           top_p=TEXT_SAMPLING.top_p)
    parser.add_argument("--stop", action="append", default=[],
                        help=r"stop when this text is produced (repeatable; escapes like \n work); it is not printed")
    parser.add_argument("--valid-utf8", action="store_true",
                        help="never write a byte that makes the output invalid UTF-8 (a byte-level model can write "
                             "half a character; tilelli chat always decodes this way)")
    parser.add_argument("--show-confidence", action="store_true",
                        help="colour bytes by the model's probability (TTY) and print mean/min confidence on stderr")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (text, per-byte confidence, stop reason)")
    add_engine_arguments(parser)
    parser.epilog = ("At the model's context limit (max_seq_len bytes, prompt included) generation stops "
                     "and says so on stderr. Ctrl-C stops generation and keeps what was produced.")


def _read_prompt(args: argparse.Namespace) -> bytes:
    """The prompt bytes, from --prompt or stdin under the same rule (tilelli.limits.utf8)."""
    if args.prompt is not None:
        prompt = utf8(args.prompt, "--prompt")
    elif sys.stdin is None or sys.stdin.isatty():
        raise TilelliError("no prompt: pass --prompt TEXT or pipe text on stdin")
    else:
        prompt = utf8(sys.stdin.buffer.read(), "stdin")
    if not prompt:
        raise TilelliError("the prompt is empty; give at least one byte")
    return prompt


def _shade(prob: float) -> str:
    """ANSI colour for a confidence: red < 0.3 <= yellow < 0.7 <= default."""
    return "\x1b[31m" if prob < 0.3 else "\x1b[33m" if prob < 0.7 else ""


def run(args: argparse.Namespace) -> int:
    from tilelli.infer.generate import SamplingConfig, stream
    from tilelli.model.checkpoint_files import checkpoint_dir, default_checkpoint, model_config

    prompt = _read_prompt(args)
    stops = tuple(s.encode("utf-8").decode("unicode_escape").encode("latin-1") for s in args.stop)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop=stops, valid_utf8=args.valid_utf8)
    path = checkpoint_dir(args.checkpoint or default_checkpoint())
    limit = model_config(path).max_seq_len
    if len(prompt) > limit:
        raise TilelliError(f"the prompt is {len(prompt)} bytes but the model's context is {limit}; shorten it")

    from tilelli.infer import load_decoder

    gen = stream(load_decoder(path, args.engine, args.threads, args.int8), prompt, cfg)
    out = sys.stdout.buffer
    colour = args.show_confidence and sys.stdout.isatty() and not args.json
    got, probs = bytearray(), []
    if not args.json:
        out.write(prompt)
        out.flush()
    interrupted = False
    try:
        for t in gen:
            got.append(t.byte)
            probs.append(t.prob)
            if not args.json:
                b = bytes([t.byte])
                out.write(_shade(t.prob).encode() + b + b"\x1b[0m" if colour and _shade(t.prob) else b)
                out.flush()
    except KeyboardInterrupt:
        interrupted = True
    reason = "interrupted" if interrupted else gen.stop_reason
    if args.json:
        print(json.dumps({"prompt": prompt.decode("utf-8", "replace"), "text": got.decode("utf-8", "replace"),
                          "confidence": probs, "stop_reason": reason}))
    else:
        out.write(b"\n")
        out.flush()
        if reason == "context":
            print(f"[stopped: the model's context of {limit} bytes is full]", file=sys.stderr)
        if args.show_confidence and probs:
            print(f"[confidence: mean {sum(probs) / len(probs):.3f}, min {min(probs):.3f} over {len(probs)} bytes]",
                  file=sys.stderr)
    if interrupted:
        raise Interrupted(f"interrupted after {len(got)} bytes")
    return 0
