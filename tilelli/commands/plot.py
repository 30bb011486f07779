"""`tilelli plot`: overlay train/valid bits-per-byte curves of runs into a PNG (see tilelli.train.plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tilelli.train.paths import check_writable_file
from tilelli.train.plot import plot_runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories of `tilelli train`")
    parser.add_argument("-o", "--out", type=Path, default=Path("curves.png"), metavar="PNG",
                        help="image to write (default curves.png)")


def run(args: argparse.Namespace) -> int:
    check_writable_file(args.out, "-o/--out")  # before reading the runs and importing matplotlib
    print(plot_runs(args.runs, args.out))
    return 0
