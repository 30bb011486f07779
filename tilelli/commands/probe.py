"""`tilelli probe`: does the model know when it does not know? AUROCs of its uncertainty signals.

Builds the probe's prompt sets (`tilelli.probe.sets`: 7 regimes, 210 probe prompts and a
disjoint training split) from the shared data into OUT/probe-sets/ (or reads them from --sets),
measures every signal of one checkpoint on both (`tilelli.probe.signals`), fits the detector on
the training split and writes OUT/probe.json and OUT/probe.md (`tilelli.probe.report`). OUT is
`results/` under the current directory unless --out says otherwise. `--build-sets` only writes
the sets. `studies/probe/benchmark.py` runs this for the shipped checkpoints side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tilelli.commands.options import add_threads_argument, non_negative_int
from tilelli.errors import TilelliError

MIN_LIMIT = 5  # the detector's cross-validation deals each class over 5 folds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", default=None,
        help="checkpoint or training run directory (default: the shipped tilelli-lite-ternary, or $TILELLI_CHECKPOINT)")
    add("--template", choices=("auto", "chat", "plain"), default="auto",
        help="wrap prompts in the chat template (chat) or not (plain); auto: chat when the checkpoint's "
             "config.json says it was trained on a chat set")
    add("--shared", type=Path, default=Path("../shared/data"), metavar="DIR",
        help="the shared data directory the sets are built from (default ../shared/data)")
    add("--sets", type=Path, default=None, metavar="DIR",
        help="use the sets already in DIR (probe.jsonl, train.jsonl, meta.json) instead of building them")
    add("--out", type=Path, default=Path("results"), metavar="DIR",
        help="where probe.json, probe.md and probe-sets/ go (default results/)")
    add("--build-sets", action="store_true", help="only build the sets into OUT/probe-sets and stop")
    add("--limit", type=non_negative_int, default=0,
        help=f"only the first N prompts of each regime of both sets (N >= {MIN_LIMIT}): a quick look, not a result")
    add_threads_argument(parser, default=1, zero="torch's default, for torch and the engine")
    add("--json", action="store_true", help="print the whole result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from tilelli.model.checkpoint_files import checkpoint_dir, default_checkpoint, read_config
    from tilelli.train.paths import check_writable_dir

    if args.limit and args.limit < MIN_LIMIT:
        raise TilelliError(f"--limit {args.limit} is too few; give at least {MIN_LIMIT} (or 0 for all)")
    check_writable_dir(args.out, "--out")
    if args.sets is not None:
        missing = [n for n in ("probe.jsonl", "train.jsonl", "meta.json") if not (args.sets / n).is_file()]
        if missing:
            raise TilelliError(f"--sets {args.sets} lacks {', '.join(missing)}; build them with --build-sets")
    elif not args.shared.is_dir():
        raise TilelliError(f"--shared {args.shared} does not exist; point it at the shared/data directory")
    ckpt = None
    if not args.build_sets:
        ckpt = checkpoint_dir(args.checkpoint or default_checkpoint())
        config = read_config(ckpt)

    from tilelli.model.checkpoint_files import is_chat_checkpoint
    from tilelli.probe import checkpoint_label
    from tilelli.probe.sets import build_sets, open_sets, read_set

    sets = args.sets
    if sets is None:
        sets = args.out / "probe-sets"
        meta = build_sets(args.shared, sets)
        if args.build_sets:
            print(f"{sets}: " + ", ".join(f"{split} {sum(c.values())} prompts" for split, c in meta["counts"].items()))
            return 0
    else:
        meta = open_sets(sets)

    import torch

    from tilelli.probe.report import evaluate, markdown
    from tilelli.probe.signals import measure

    torch.set_num_threads(args.threads or torch.get_num_threads())
    chat = args.template == "chat" or (args.template == "auto" and is_chat_checkpoint(ckpt))
    probe = measure(ckpt, read_set(sets / "probe.jsonl", args.limit), chat, args.threads)
    train = measure(ckpt, read_set(sets / "train.jsonl", args.limit), chat, args.threads)
    result = {"checkpoint": str(ckpt), "arch": config["model"]["arch"],
              "weights": "packed trits" if config["packed"] else config["weights_dtype"],
              "ternary": bool(config["model"]["ternary"]["quantize"]), "template": "chat" if chat else "plain",
              "limit": args.limit, "sets": {"dir": str(sets), "sha256": meta["sha256"], "counts": meta["counts"]},
              **evaluate(probe, train)}
    text = markdown(checkpoint_label(ckpt), result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (args.out / "probe.md").write_text(text)
    print(json.dumps(result, ensure_ascii=False) if args.json else text)
    return 0
