"""`tilelli prepare`: pack raw text into train.bin / valid.bin / meta.json (see tilelli.train.prepare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tilelli.commands.options import float_range, seed
from tilelli.errors import TilelliError
from tilelli.train.paths import check_writable_dir
from tilelli.train.prepare import DEFAULT_DELIMITER, FORMATS, prepare, prepare_hf_tinystories, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("inputs", nargs="*", metavar="INPUT", help="text files (.txt, .jsonl, TinyStories txt)")
    add("--out", type=Path, required=True, metavar="DIR", help="directory for the bins and meta.json")
    add("--valid", nargs="+", action="extend", default=[], metavar="FILE",
        help="files that become valid.bin while the INPUTs become train.bin (put it after the INPUTs)")
    add("--valid-fraction", type=float_range(0.0, 1.0), default=0.05,
        help="without --valid: fraction of whole documents drawn at random into valid.bin (default 0.05)")
    add("--format", choices=FORMATS, default="auto",
        help="input format; auto: .jsonl -> jsonl, a name with TinyStories -> tinystories, else txt")
    add("--delimiter", default=DEFAULT_DELIMITER,
        help=f"document delimiter in txt inputs, written after every document (default {DEFAULT_DELIMITER})")
    add("--field", default="text", help="jsonl field that holds the text (default text)")
    add("--seed", type=seed, default=0, help="seed of the random document split (default 0)")
    add("--hf-tinystories", action="store_true",
        help="download TinyStories train/valid from Hugging Face (needs huggingface_hub) and pack them")
    add("--force", action="store_true", help="overwrite the bins already in --out")


def run(args: argparse.Namespace) -> int:
    options = dict(delimiter=args.delimiter, field=args.field, seed=args.seed, force=args.force)
    if args.hf_tinystories:
        if args.inputs or args.valid:
            raise TilelliError("--hf-tinystories fetches its own train and valid files; drop INPUT/--valid")
        check_writable_dir(args.out, "--out")  # before a download of gigabytes
        meta = prepare_hf_tinystories(args.out, **options)
    else:
        meta = prepare(args.inputs, args.out, valid=args.valid, valid_fraction=args.valid_fraction,
                       fmt=args.format, **options)
    print(summary(meta, args.out))
    return 0
