"""`tilelli eval`: nats/byte and bits/byte of a checkpoint on a file, with a bootstrap CI.

A whole file takes minutes on a CPU, so a progress bar (tqdm, on stderr) shows the bytes done
when stderr is a terminal; `--no-progress` turns it off. `--max-bytes N` scores exactly the first
N predictions (the last window is cut short), and the result says how many bytes it covered.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tilelli.commands.options import add_int8_argument, add_threads_argument, int_range, positive_int, seed
from tilelli.errors import TilelliError

# A 95 % percentile interval reads its 2.5 % tails off the sorted resamples: with fewer than
# this many there is not even a handful of resamples in each tail (with 1 the "interval" was
# that one resample, which need not contain the estimate).
MIN_BOOTSTRAP = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint or training run directory (default: the shipped tilelli-lite-ternary, "
                             "or $TILELLI_CHECKPOINT)")
    parser.add_argument("--data", required=True,
                        help="a file of raw bytes (any text file, or a .bin), or a prepared data dir (its valid.bin)")
    parser.add_argument("--seq-len", type=positive_int, default=256,
                        help="window length; each window starts without context (default 256)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass (default 16)")
    parser.add_argument("--max-bytes", type=positive_int, default=None,
                        help="evaluate only the first N bytes (exactly N predictions)")
    parser.add_argument("--bootstrap", type=int_range(MIN_BOOTSTRAP), default=1000,
                        help=f"bootstrap resamples, at least {MIN_BOOTSTRAP} (default 1000)")
    parser.add_argument("--seed", type=seed, default=0, help="bootstrap seed (default 0)")
    add_int8_argument(parser, default="float")  # eval measures the model: its exact path unless asked
    add_threads_argument(parser, zero="torch's default")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")
    parser.add_argument("--json", action="store_true",
                        help='print one object {"nats_per_byte", "bpb", "bpb_ci": [lo, hi], "bytes"}')


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)  # the paths first: a typo should not wait for the torch import
    if data.is_dir():
        data = data / "valid.bin"
    if not data.is_file():
        raise TilelliError(f"{data} is not a file; give a text/.bin file or a data dir holding valid.bin")
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise TilelliError(f"no checkpoint at {args.checkpoint}: the directory does not exist")

    import torch
    from tqdm import tqdm

    from tilelli.model.checkpoint import default_checkpoint, load
    from tilelli.train.evaluate import bootstrap_ci, window_losses

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.checkpoint or default_checkpoint())
    if args.int8:
        from tilelli.model.ternary import use_int8_inputs

        if not use_int8_inputs(model):
            raise TilelliError("--int8 is for ternary models: this one has no quantized layer")
    if args.seq_len > model.config.max_seq_len:
        raise TilelliError(f"--seq-len {args.seq_len} exceeds the model's context {model.config.max_seq_len}")
    positions = data.stat().st_size - 1  # what the windows cover; the bar counts it
    if args.max_bytes is not None:
        positions = min(positions, args.max_bytes)
    with tqdm(total=positions, unit="B", unit_scale=True, desc="eval", delay=1.0, leave=False,
              disable=args.no_progress or not sys.stderr.isatty()) as bar:
        sums, counts = window_losses(model, data, args.batch_size, args.seq_len, max_bytes=args.max_bytes,
                                     on_batch=bar.update)
    nats = float(sums.sum() / counts.sum())
    lo, hi = bootstrap_ci(sums, counts, args.bootstrap, seed=args.seed)
    result = {"nats_per_byte": nats, "bpb": nats / math.log(2), "bpb_ci": [lo / math.log(2), hi / math.log(2)],
              "bytes": int(counts.sum())}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{data}: {result['nats_per_byte']:.4f} nats/byte, {result['bpb']:.4f} bpb "
              f"(95% CI {result['bpb_ci'][0]:.4f}-{result['bpb_ci'][1]:.4f}) over {result['bytes']:,} bytes")
    return 0
