"""`tilelli prepare-chat`: the chat fine-tuning set and its held-out prompts (see tilelli.chat.dataset)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tilelli.errors import TilelliError
from tilelli.train.paths import check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--shared", type=Path, default=Path("../shared/data"), metavar="DIR",
        help="the shared data directory (tinystories/, chat/, qa/); default ../shared/data")
    add("--out", type=Path, required=True, metavar="DIR",
        help="directory for train.bin, valid.bin (masked sources), eval/*.jsonl and meta.json")
    add("--seed", type=int, default=0, help="seed of the splits and phrasings (default 0)")
    add("--force", action="store_true", help="overwrite a chat set already in --out")


def run(args: argparse.Namespace) -> int:
    check_writable_dir(args.out, "--out")
    if (args.out / "train.bin").exists() and not args.force:
        raise TilelliError(f"{args.out} already holds a data set; add --force to overwrite it")
    from tilelli.chat.dataset import build

    meta = build(args.shared, args.out, args.seed)
    t = meta["train"]
    units = ", ".join(f"{n:,} {k}" for k, n in sorted(t["units"].items()))
    held = ", ".join(f"{name} {sum(counts.values())}" for name, counts in meta["held_out"].items())
    print(f"train.bin: {t['bytes']:,} bytes ({t['target_bytes']:,} reply bytes), {t['conversations']:,} "
          f"conversations of {t['turns']:,} turns: {units}\n"
          f"valid.bin: {meta['valid']['bytes']:,} bytes; held out ({args.out}/eval/): {held}")
    return 0
