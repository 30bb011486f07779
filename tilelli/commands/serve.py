"""`tilelli serve`: an OpenAI-compatible HTTP API for a checkpoint, and a web chat page at /.

    tilelli serve [--checkpoint PATH] [--host 127.0.0.1] [--port 8000]

The server listens at once (GET /health answers 503 while the model loads, 200 after) and
loads the model in the background; a model that fails to load stops the server with one line.
Sampling options are the defaults for requests that leave them out; --max-new-tokens is also
the most a request's max_tokens may ask for. Everything else is in docs/serve.md.
"""

from __future__ import annotations

import argparse
import socket
import sys

from tilelli.chat.defaults import CHAT_SAMPLING
from tilelli.commands.options import (
    abstain_rule,
    add_abstain_argument,
    add_engine_arguments,
    add_sampling_arguments,
    int_range,
    non_negative_int,
    positive_int,
)
from tilelli.errors import TilelliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", default=None, help="checkpoint to serve (default: the shipped tilelli-chat-lite-ternary, "
                                           "or $TILELLI_CHAT_CHECKPOINT)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    add("--port", type=int_range(0, 65535), default=8000, help="TCP port (default 8000; 0 = any free port)")
    add_sampling_arguments(parser, max_new_tokens=CHAT_SAMPLING.max_new_tokens, temperature=CHAT_SAMPLING.temperature,
                           top_p=CHAT_SAMPLING.top_p)
    add_abstain_argument(parser)
    for action in parser._actions:  # the sampling options are per-request defaults here; say so
        if action.dest == "max_new_tokens":
            action.help = "default and largest max_tokens of a request, in bytes (default 600)"
    add("--max-batch", type=positive_int, default=16, help="requests decoded together in one forward call (default 16)")
    add("--max-queue", type=non_negative_int, default=64,
        help="requests that may wait for a free slot; more get HTTP 429 (default 64)")
    add("--max-body-bytes", type=positive_int, default=1 << 20, help="largest request body; larger get HTTP 413 "
                                                                   "(default 1 MiB)")
    add("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
        help="uvicorn's log level (info logs every request)")
    add_engine_arguments(parser)


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading anything, so a taken port is one clear line, not a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TilelliError(f"--host {host!r}: {e.strerror}; give an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise TilelliError(f"cannot listen on {host}:{port}: {e.strerror} (another server there? pick "
                           "another --port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    from tilelli.model.checkpoint_files import DEFAULT_CHAT_MODEL, checkpoint_dir, default_checkpoint

    path = checkpoint_dir(args.checkpoint or default_checkpoint(DEFAULT_CHAT_MODEL, "TILELLI_CHAT_CHECKPOINT"))
    from tilelli.infer.generate import SamplingConfig

    defaults = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    sock = _listen(args.host, args.port)

    import uvicorn

    from tilelli.infer import load_decoder
    from tilelli.serve.app import Limits, create_app
    from tilelli.serve.connection import server_config

    server: uvicorn.Server | None = None
    failure: list[str] = []

    def stop(error: str) -> None:
        failure.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(lambda: load_decoder(path, args.engine, args.threads, args.int8), path.name, defaults,
                     Limits(args.max_body_bytes, args.max_batch, args.max_queue), on_failure=stop,
                     rule=abstain_rule(args.abstain_threshold, path))
    server = uvicorn.Server(server_config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"tilelli serve: {path.name} at http://{shown}:{port}/ (chat page), API http://{shown}:{port}/v1 "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if failure:
        raise TilelliError(f"could not load {path}: {failure[0]}")
    return 0
