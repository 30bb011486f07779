"""Bits per byte by position in the context window: is the whole claimed context trained?

For every shipped checkpoint, non-overlapping windows of the model's full context
(max_seq_len bytes, each starting without context) from the TinyStories valid slice; the
per-byte losses are pooled into position buckets 0-64, 64-256, 256-512, 512-1024 (and
1024-2048 where the context reaches), with a bootstrap 95 % CI over windows. A model trained
on shorter windows than it claims shows a rise past its training length.

    python -m studies.quality.context      # writes studies/quality/results/context.json, docs/results/context.md
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from studies.common import VALID_TEXT as VALID
from studies.common import add_output_args, publish, results_dir
from tilelli.model.checkpoint import SHIPPED_DIR, load, read_config
from tilelli.train.data import eval_windows

RESULTS = results_dir(__file__)
MODELS = ("tilelli-lite-fp32", "tilelli-lite-ternary", "vanilla-fp32")
EDGES = (0, 64, 256, 512, 1024, 2048)


@torch.no_grad()
def position_losses(model: torch.nn.Module, data: np.ndarray, seq_len: int, windows: int) -> np.ndarray:
    """(windows, seq_len) per-byte cross-entropy in nats, position t predicting byte t + 1."""
    rows = []
    for x, y in eval_windows(data, 4, seq_len, math.ceil(windows / 4)):
        if x.shape[1] < seq_len:
            break  # the short leftover window: not a full context
        logits = model(x).logits.float()  # (B, T, V)
        rows.append(F.cross_entropy(logits.transpose(1, 2), y, reduction="none").double().numpy())  # (B, T)
    return np.concatenate(rows)[:windows]


def buckets(nll: np.ndarray, seed: int = 0) -> list[dict]:
    """bpb and bootstrap CI (over windows) of each position bucket inside the window."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(nll), size=(1000, len(nll)))
    out = []
    for lo, hi in zip(EDGES, EDGES[1:], strict=False):
        if lo >= nll.shape[1]:
            break
        per_window = nll[:, lo:hi].mean(1) / math.log(2)  # (W,) bpb of the bucket in each window
        boots = per_window[picks].mean(1)
        out.append({"positions": f"{lo}-{min(hi, nll.shape[1])}", "bpb": float(per_window.mean()),
                    "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200, help="full-context windows per model (default 200)")
    ap.add_argument("--threads", type=int, default=2)
    add_output_args(ap, RESULTS)
    ap.add_argument("--only", action="append", default=[],
                    help="re-measure only this model (repeatable); the others' rows are kept from context.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = np.frombuffer(VALID.read_bytes(), dtype=np.uint8)
    result = {"windows": args.windows, "data": str(VALID.name), "models": {}}
    if args.only:
        result = json.loads((args.out / "context.json").read_text())
        if result["windows"] != args.windows:
            raise SystemExit(f"error: context.json has {result['windows']} windows per model; use --windows the same")
    for name in MODELS:
        if args.only and name not in args.only:
            continue
        ckpt = SHIPPED_DIR / name
        seq_len = read_config(ckpt)["model"]["max_seq_len"]
        nll = position_losses(load(ckpt), data, seq_len, args.windows)
        result["models"][name] = {"max_seq_len": seq_len, "windows": len(nll), "buckets": buckets(nll)}
    publish(args, "context", result, markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    names = list(result["models"])
    cols = [b["positions"] for b in max((m["buckets"] for m in result["models"].values()), key=len)]
    lines = [f"Valid bpb by position inside {max(m['max_seq_len'] for m in result['models'].values())}-byte "
             f"windows ({result['windows']} windows of each model's full context, bootstrap 95 % CI over windows):", "",
             "| model | context | " + " | ".join(f"pos {c}" for c in cols) + " |",
             "|---|---:|" + "---|" * len(cols)]
    for n in names:
        m = result["models"][n]
        cells = [f"{b['bpb']:.3f} ({b['ci'][0]:.3f}–{b['ci'][1]:.3f})" for b in m["buckets"]]
        lines.append(f"| `{n}` | {m['max_seq_len']} | " + " | ".join(cells + ["—"] * (len(cols) - len(cells))) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
