"""`tilelli` command line: one sub-command per pipeline stage.

Each sub-command lives in its own module that exposes `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so `tilelli --help`
does not pay for importing torch; commands check their arguments and paths before they
import it. A `TilelliError` becomes one line on stderr and exit code 2, and so does an `OSError`
that names a path (full disk, read-only or missing location, permissions); Ctrl-C exits 130;
a reader that closes the pipe (`| head`) ends the command quietly with 141.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("tilelli.commands.models", "list the named model configs and their parameter counts"),
    "generate": ("tilelli.commands.generate", "generate text from a checkpoint, streaming to the terminal"),
    "prepare": ("tilelli.commands.prepare", "pack raw text (txt, jsonl, TinyStories) into train.bin / valid.bin"),
    "prepare-chat": ("tilelli.commands.prepare_chat", "build the chat fine-tuning set and held-out prompts"),
    "calibrate": ("tilelli.commands.calibrate", "calibrate a chat checkpoint's abstain threshold on held-out requests"),
    "chat": ("tilelli.commands.chat", "chat with a chat checkpoint (interactive, or --prompt TEXT [--json])"),
    "serve": ("tilelli.commands.serve", "an OpenAI-compatible HTTP API with streaming, and a web chat page"),
    "train": ("tilelli.commands.train", "train any named config (CPU, GPU, or several GPUs via torchrun)"),
    "eval": ("tilelli.commands.eval", "bits per byte of a checkpoint on a file, with a bootstrap confidence interval"),
    "export": ("tilelli.commands.export", "a checkpoint to ship: packed trits or bf16, plus its run records"),
    "bench": ("tilelli.commands.bench", "decode speed of a checkpoint vs a plain PyTorch GPT, measured in one process"),
    "plot": ("tilelli.commands.plot", "overlay training curves of one or more runs into a PNG"),
    "probe": ("tilelli.commands.probe", "does the model know when it does not know? AUROCs of its uncertainty signals"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _top_level_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tilelli COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `tilelli COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    if argv[0] == "--version":
        from tilelli import __version__
        print(__version__)
        return 0
    name = argv[0]
    # numpy's OpenBLAS starts a thread pool whose threads spin on the cores the native engine and
    # torch compute on (measured: 25 % slower decoding); the CLI needs no numpy BLAS threads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if name not in COMMANDS:
        print(f"tilelli: error: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = _Parser(prog=f"tilelli {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])  # argparse itself exits 2 on bad usage
    from tilelli.errors import Interrupted, TilelliError
    from tilelli.train.paths import os_error_line
    try:
        return int(module.run(args) or 0)
    except TilelliError as e:
        print(f"tilelli {name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`tilelli generate | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        return 128 + signal.SIGPIPE  # what a shell reports for a writer its pipe ended
    except OSError as e:  # the safety net: a full disk or an unwritable path the command did not foresee
        line = os_error_line(e)
        if line is None:
            raise  # not about a path the user chose: a bug, keep the traceback
        print(f"tilelli {name}: error: {line}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a Ctrl-C the command handled: it says what it saved
        if str(e):
            print(f"tilelli {name}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"tilelli {name}: interrupted", file=sys.stderr)
        return 130
