"""`tilelli chat`: talk to a chat checkpoint in the terminal, or ask once with --prompt.

Interactive: line editing and history (readline), replies stream as they are generated,
Ctrl-C stops the current reply (and at the prompt clears the line), Ctrl-D or /quit leaves,
/reset forgets the conversation. When the conversation outgrows the model's context, the
oldest turns are dropped, and that is said once.

One-shot: `--prompt TEXT` prints the reply; with `--json`, one object
{"reply", "abstained", "confidence", "abstain_probability", "stop_reason"}. Ctrl-C stops the
reply, prints what was produced (the JSON object with stop_reason "interrupted", with --json),
says so on stderr and exits 130, with or without --json, like every command's Ctrl-C.

Input text must be valid UTF-8 (tilelli.limits.utf8): a --prompt that is not is an error; an
interactive line that is not is refused with a note and the conversation goes on, kept whole.

Whether to refuse is decided by the checkpoint's calibrated abstain rule (abstain.json, from
`tilelli calibrate`; see tilelli.chat.abstain) unless --abstain-threshold says otherwise.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from dataclasses import replace

from tilelli.chat.defaults import CHAT_SAMPLING
from tilelli.commands.options import abstain_rule, add_abstain_argument, add_engine_arguments, add_sampling_arguments
from tilelli.errors import Interrupted, TilelliError
from tilelli.limits import utf8

HELP = "commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves, Ctrl-C stops a reply"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="chat checkpoint (default: the shipped tilelli-chat-lite-ternary, "
                             "or $TILELLI_CHAT_CHECKPOINT)")
    parser.add_argument("--prompt", help="ask one message, print the reply and exit")
    parser.add_argument("--json", action="store_true", help="with --prompt: print one JSON object")
    add_sampling_arguments(parser, max_new_tokens=CHAT_SAMPLING.max_new_tokens, temperature=CHAT_SAMPLING.temperature,
                           top_p=CHAT_SAMPLING.top_p)
    add_abstain_argument(parser)
    add_engine_arguments(parser)
    parser.epilog = HELP


def _writer() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def _say(decoder: codecs.IncrementalDecoder, data: bytes) -> None:
    """Print reply bytes as text, never half a UTF-8 character."""
    sys.stdout.write(decoder.decode(data))
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from tilelli.model.checkpoint_files import DEFAULT_CHAT_MODEL, checkpoint_dir, default_checkpoint

    if args.json and args.prompt is None:
        raise TilelliError("--json needs --prompt TEXT (the interactive chat prints text)")
    if args.prompt is not None and not args.prompt.strip():
        raise TilelliError("the --prompt message is empty")
    prompt = None if args.prompt is None else utf8(args.prompt, "--prompt").decode("utf-8")
    path = checkpoint_dir(args.checkpoint or default_checkpoint(DEFAULT_CHAT_MODEL, "TILELLI_CHAT_CHECKPOINT"))

    from tilelli.chat.session import ChatSession
    from tilelli.infer import load_decoder
    sampling = replace(CHAT_SAMPLING, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    rule = abstain_rule(args.abstain_threshold, path)
    session = ChatSession(load_decoder(path, args.engine, args.threads, args.int8), sampling, rule)
    if prompt is not None:
        return _one_shot(session, prompt, args.json)
    return _interactive(session, path.name)


def _one_shot(session, text: str, as_json: bool) -> int:
    if as_json:
        reply = session.reply(text)
        print(json.dumps(reply.to_dict()))
    else:
        decoder = _writer()
        reply = session.reply(text, on_bytes=lambda b: _say(decoder, b))
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    if reply.stop_reason == "interrupted":  # the CLI prints this and exits 130, as for any Ctrl-C
        raise Interrupted("interrupted; the reply so far is printed")
    return 0


def _interactive(session, name: str) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform; input() still works
        pass
    print(f"tilelli chat with {name}; {HELP}", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):  # a line that is not UTF-8 reaches the check below, not a crash
        sys.stdin.reconfigure(errors="surrogateescape")
    told_dropped = False
    while True:
        try:
            text = utf8(input("you> "), "that line").decode("utf-8")
        except TilelliError as e:
            print(f"(error: {e}; the conversation is kept)", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        except EOFError:
            print(file=sys.stderr)
            return 0
        command = text.strip()
        if not command:
            continue
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(conversation forgotten)", file=sys.stderr)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=sys.stderr)
            continue
        decoder = _writer()
        sys.stdout.write("tilelli> ")
        try:
            reply = session.reply(text, on_bytes=lambda b, d=decoder: _say(d, b))
        except TilelliError as e:
            print(f"\n(error: {e})", file=sys.stderr)
            continue
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        if reply.stop_reason == "interrupted":
            print("(reply stopped)", file=sys.stderr)
        elif reply.stop_reason == "max_new_tokens":
            print(f"(reply cut at --max-new-tokens {session.sampling.max_new_tokens} bytes)", file=sys.stderr)
        if reply.dropped_turns and not told_dropped:
            print("(the conversation is longer than the model's context: the oldest turns are left out "
                  "from now on)", file=sys.stderr)
            told_dropped = True
