"""Training throughput (tokens/s) of every named config, in one process.

Each step is the trainer's own `train_step` (forward, backward, clipping, AdamW update) on
windows of a built-in sample, batch 16 x 256 by default, 2 CPU threads (the reference
machine). All models are built first and warmed up; then every repeat runs each config in
turn, so slow phases of a shared machine hit every config alike, and the median over repeats
is reported, with the ratio to vanilla-fp32. CUDA is measured as well when present.

    python -m studies.speed.train_speed             # writes results/train_speed.json, docs/results/*.md
    python -m studies.speed.train_speed --quick     # 1 repeat, 1 step: checks it works (_quick files)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import torch

from studies.common import add_output_args, publish, results_dir
from tilelli import __version__
from tilelli.model.config import from_name, list_configs
from tilelli.model.models import build_model
from tilelli.train.optim import build_optimizers
from tilelli.train.trainer import cpu_name, grad_groups, sample_text, train_step

RESULTS = results_dir(__file__)
BASELINE = "vanilla-fp32"


def batches(batch_size: int, seq_len: int, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` fixed batches of random windows of the sample (content does not change the cost)."""
    data = np.frombuffer(sample_text(1 << 18), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
        rows = torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int64))
        out.append((rows[:, :-1].contiguous(), rows[:, 1:].contiguous()))
    return out


def measure(device: torch.device, names: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Median tokens/s per config on `device`, configs interleaved within every repeat."""
    data = [(x.to(device), y.to(device)) for x, y in batches(args.batch_size, args.seq_len, args.steps)]
    setups = {}
    for name in names:
        torch.manual_seed(0)
        model = build_model(from_name(name)).to(device).train()
        setups[name] = (model, build_optimizers(model, "adamw", 1e-3, 0.1, fused=device.type == "cuda"),
                        grad_groups(model))

    def run(name: str, steps: int) -> float:
        model, optimizers, groups = setups[name]
        t0 = time.perf_counter()
        for x, y in data[:steps]:
            stats = train_step(model, optimizers, groups, x, y, lr=1e-3, grad_clip=1.0)
        stats.loss.item()  # wait for the device
        return steps * args.batch_size * args.seq_len / (time.perf_counter() - t0)

    for name in names:
        run(name, args.warmup)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names:
            samples[name].append(run(name, args.steps))
        print(f"{device} repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {s[-1]:.0f}" for n, s in samples.items()), flush=True)
    return {name: {"params": setups[name][0].num_params(), "tokens_per_s": statistics.median(s),
                   "samples": [round(v, 1) for v in s]} for name, s in samples.items()}


def markdown(results: dict, meta: dict) -> str:
    lines = [f"# Training speed (batch {meta['batch_size']} x {meta['seq_len']}, fp32, AdamW)", "",
             f"{meta['machine']['processor']}, {meta['threads']} CPU threads; median of {meta['repeats']} "
             f"repeats of {meta['steps']} steps after {meta['warmup']} warm-up steps, configs interleaved; "
             f"1-min load average {meta['load_average'][0]:.1f} before, {meta['load_average'][1]:.1f} after.", ""]
    for device, by_name in results.items():
        base = by_name.get(BASELINE, {}).get("tokens_per_s")
        lines += [f"## {device}", "", f"| config | params | tokens/s | vs {BASELINE} |", "|---|---:|---:|---:|"]
        for name, r in by_name.items():
            ratio = f"{r['tokens_per_s'] / base:.2f}" if base else "-"
            lines.append(f"| {name} | {r['params'] / 1e6:.2f} M | {r['tokens_per_s']:,.0f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per config (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed repeat (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per config first (default 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, the reference machine)")
    parser.add_argument("--models", nargs="+", default=list_configs(), help="configs (default: all)")
    add_output_args(parser, RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat of 1 step after 1 warm-up step; writes train_speed_quick.*")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.warmup = 1, 1, 1
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()[0]
    results = {str(d): measure(d, args.models, args) for d in devices}
    meta = {"batch_size": args.batch_size, "seq_len": args.seq_len, "threads": args.threads,
            "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "quick": args.quick,
            "load_average": [load_before, os.getloadavg()[0]],  # > threads: other work shared the CPU
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"tilelli": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "processor": cpu_name(),
                        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}
    stem = "train_speed_quick" if args.quick else "train_speed"
    publish(args, stem, {**meta, "results": results}, markdown(results, meta), indent=2)
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
