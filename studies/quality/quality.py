"""Quality of the shipped checkpoints: bits per byte in domain and out of domain.

For every checkpoint under checkpoints/ it records parameters, how the weights are stored
(bits per weight, file KB), valid bpb on the whole TinyStories valid slice with a window
bootstrap 95 % CI, bpb on the first OOD_BYTES of each out-of-domain text in ../shared/data/ood/,
and what the model saw in training (tokens, epochs of the train slices). The data is
re-prepared from ../shared/data with `tilelli prepare` and must hash to what the runs
recorded, so the numbers are about the same bytes. Writes studies/quality/results/quality.json
and docs/results/quality.md.

    python -m studies.quality.quality            # ~15 min on 2 CPU cores
    python -m studies.quality.quality --reuse    # measure only checkpoints whose weights changed

`--reuse` keeps the row of every checkpoint whose model.safetensors hashes to the sha256 the
existing quality.json recorded; `--only NAME` measures just that checkpoint (and reuses the
others where it can).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import tempfile
from pathlib import Path

import torch

from studies.common import SHARED, VALID_TEXT, add_output_args, publish, results_dir
from tilelli.model.checkpoint import load, read_config
from tilelli.model.checkpoint_files import shipped_base_checkpoints
from tilelli.train.evaluate import bootstrap_ci, window_losses
from tilelli.train.prepare import prepare

RESULTS = results_dir(__file__)
TRAIN_FILES = ["tinystories/TinyStories-train.head2MiB.txt", "tinystories/TinyStoriesV2-GPT4-train.head10k-lines.txt"]
VALID_FILE = str(VALID_TEXT.relative_to(SHARED))
OOD_FILES = {"shakespeare": "ood/tinyshakespeare.txt", "wikitext2": "ood/wikitext2.test.tokens.txt"}
OOD_BYTES = 256 * 1024
BATCH, SEQ = 16, 256


def prepared_data(out_dir: Path) -> dict:
    """`tilelli prepare` of the train and valid slices, as the README does; returns meta.json."""
    missing = [f for f in [*TRAIN_FILES, VALID_FILE] if not (SHARED / f).is_file()]
    if missing:
        raise SystemExit(f"error: {SHARED / missing[0]} is missing; this benchmark needs ../shared/data")
    return prepare([SHARED / f for f in TRAIN_FILES], out_dir, valid=[SHARED / VALID_FILE], progress=False)


def bpb_with_ci(model: torch.nn.Module, path: Path, max_bytes: int | None = None) -> dict:
    max_batches = None if max_bytes is None else math.ceil(max_bytes / (BATCH * SEQ))
    sums, counts = window_losses(model, path, BATCH, SEQ, max_batches)
    lo, hi = bootstrap_ci(sums, counts)
    ln2 = math.log(2)
    return {"bpb": float(sums.sum() / counts.sum()) / ln2, "ci": [lo / ln2, hi / ln2], "bytes": int(counts.sum())}


def measure(ckpt: Path, data_dir: Path, meta: dict) -> dict:
    """One row of the table, every number from the checkpoint and the data files."""
    cfg = read_config(ckpt)
    run = json.loads((ckpt / "run.json").read_text())
    if run["data"]["train_sha256"] != meta["train"]["sha256"]:
        raise SystemExit(f"error: {ckpt} was trained on other bytes than the prepared slices (train sha256 differs)")
    model = load(ckpt)
    tokens = cfg["tokens"] + cfg.get("init", {}).get("tokens", 0)
    row = {"name": ckpt.name, "weights_sha256": weights_sha256(ckpt), "config": cfg["train"]["model"],
           "params": cfg["params"],
           "weights": "packed trits" if cfg["packed"] else cfg["weights_dtype"],
           "bits_per_weight": round(cfg["bits_per_weight"], 4) if cfg["packed"] else
           {"bfloat16": 16, "float32": 32}[cfg["weights_dtype"]],
           "checkpoint_kb": round(cfg["file_bytes"] / 1024), "step": cfg["step"],
           "tokens": tokens, "epochs": round(tokens / meta["train"]["bytes"], 3),
           "valid": bpb_with_ci(model, data_dir / "valid.bin"),
           "ood": {k: bpb_with_ci(model, SHARED / f, OOD_BYTES) for k, f in OOD_FILES.items()}}
    if "init" in cfg:
        row["init"] = cfg["init"]
    return row


def weights_sha256(ckpt: Path) -> str:
    return hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()


def ternary_ratios(rows: list[dict]) -> dict[str, float]:
    """Valid bpb of each shipped Lite ternary model over the shipped Lite FP32 one (1.03 = a 3 % gap)."""
    fp32 = {r["config"]: r for r in rows}.get("tilelli-lite-fp32")
    if fp32 is None:
        return {}
    return {r["name"]: r["valid"]["bpb"] / fp32["valid"]["bpb"] for r in rows if r["config"] == "tilelli-lite-ternary"}


def shipped() -> list[Path]:
    return shipped_base_checkpoints()  # the chat models have their own benchmark (chat_eval.py)


def table(rows: list[dict]) -> str:
    ood = list(OOD_FILES)
    lines = ["| model | params | weights | bits/weight | checkpoint | valid bpb (95 % CI) | "
             + " | ".join(f"OOD {k} bpb" for k in ood) + " | tokens seen | epochs |",
             "|---|---:|---|---:|---:|---|" + "---:|" * len(ood) + "---:|---:|"]
    for r in rows:
        v = r["valid"]
        bits = f"{r['bits_per_weight']:.3f}" if r["weights"] == "packed trits" else str(r["bits_per_weight"])
        lines.append(f"| `{r['name']}` | {r['params']:,} | {r['weights']} | {bits} | {r['checkpoint_kb']:,} KB | "
                     f"{v['bpb']:.4f} ({v['ci'][0]:.4f}–{v['ci'][1]:.4f}) | "
                     + " | ".join(f"{r['ood'][k]['bpb']:.3f}" for k in ood)
                     + f" | {r['tokens'] / 1e6:.2f} M | {r['epochs']:.2f} |")
    lines += [f"\nTernary gap, `{name}` vs `tilelli-lite-fp32`: {ratio - 1:+.2%} valid bpb."
              for name, ratio in ternary_ratios(rows).items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(ap, RESULTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="keep the rows of unchanged checkpoints")
    ap.add_argument("--only", action="append", default=[], help="measure only this checkpoint (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old_file = args.out / "quality.json"
    old = {r["name"]: r for r in json.loads(old_file.read_text())["rows"]} if old_file.is_file() else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        meta = prepared_data(Path(tmp))
        for ckpt in shipped():
            kept = old.get(ckpt.name)
            if (args.reuse or args.only) and kept and kept.get("weights_sha256") == weights_sha256(ckpt) \
                    and ckpt.name not in args.only:
                rows.append(kept)
            elif not args.only or ckpt.name in args.only:
                rows.append(measure(ckpt, Path(tmp), meta))
    result = {"benchmark": "quality", "machine": platform.platform(), "torch": torch.__version__,
              "valid": {"file": VALID_FILE, "sha256": meta["valid"]["sha256"]},
              "ood_bytes": OOD_BYTES, "ood_files": OOD_FILES, "window": [BATCH, SEQ], "rows": rows,
              "ternary_over_fp32": ternary_ratios(rows)}
    publish(args, "quality", result, table(rows), indent=2)
    print(table(rows))


if __name__ == "__main__":
    main()
