"""One Muon optimizer step over Lite's block matrices: torch.optim.Muon (Newton-Schulz in bf16)
vs tilelli's Muon (the same update with Newton-Schulz in FP32 on CPU), with AdamW as reference.

Why: on a CPU without bf16 matrix units torch's bf16 matmuls are far slower than FP32, which
made Muon training impractical here. The three optimizers step in turn within every repeat on
the same random gradients; medians of the repeats. Writes studies/speed/results/muon_step.json
and docs/results/muon_step.md.

    python -m studies.speed.muon_step [--repeats 3] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from studies.common import add_output_args, publish, results_dir
from tilelli.model.config import from_name
from tilelli.model.models import build_model
from tilelli.train.optim import Muon, param_roles
from tilelli.train.trainer import cpu_name

RESULTS = results_dir(__file__)
KW = {"lr": 1e-3, "weight_decay": 0.1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    matrices = param_roles(build_model(from_name("tilelli-lite-fp32")))["matrix"]  # Muon's parameters
    for p in matrices:
        p.grad = torch.randn_like(p)
    optimizers = {"adamw": torch.optim.AdamW(matrices, **KW),
                  "muon_torch_bf16": torch.optim.Muon(matrices, adjust_lr_fn="match_rms_adamw", **KW),
                  "muon_tilelli_fp32": Muon(matrices, adjust_lr_fn="match_rms_adamw", **KW)}
    times: dict[str, list[float]] = {k: [] for k in optimizers}
    for _ in range(args.repeats + 1):  # the first round warms up (state allocation)
        for name, opt in optimizers.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    s = {k: statistics.median(v[1:]) for k, v in times.items()}
    result = {"benchmark": "muon_step", "machine": platform.platform(), "cpu": cpu_name(), "threads": args.threads,
              "load_avg_1min": os.getloadavg()[0],
              "torch": torch.__version__, "matrices": len(matrices), "weights": sum(p.numel() for p in matrices),
              "seconds": s, "torch_over_tilelli": s["muon_torch_bf16"] / s["muon_tilelli_fp32"]}
    lines = [f"One optimizer step over Lite's {len(matrices)} block matrices ({result['weights']:,} weights), "
             f"{args.threads} threads, median of {args.repeats} (1-minute load average "
             f"{result['load_avg_1min']:.1f} on {os.cpu_count()} CPUs):", "",
             "| optimizer | seconds per step |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in s.items()]
    lines += ["", f"torch's Muon takes {result['torch_over_tilelli']:.1f}x as long as tilelli's."]
    publish(args, "muon_step", result, "\n".join(lines) + "\n", indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
