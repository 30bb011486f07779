"""Forward + backward time of one causal conv layer: the C kernel vs the F.conv1d path.

One `CausalConv` (FP32, the depthwise causal conv of the local and wide pathways) on a
(B, T, C) input that requires grad, as in a block; the reference is the same layer inside
`kernel_disabled()` (transpose, pad, F.conv1d, transpose back). Shapes: the Lite model's
local conv (C=320, k=5) and the parent's local and wide convs (C=512, k=5 and k=21), batch
16 x 256. Both paths run in turn within every repeat (the machine may be shared); the median
of the repeats is reported. Writes studies/speed/results/causal_conv.json
and docs/results/causal_conv.md.

    python -m studies.speed.causal_conv [--repeats 15] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch

from studies.common import add_output_args, publish, results_dir
from tilelli.kernels import causal_conv as kernel
from tilelli.model.config import TernaryOptions
from tilelli.model.pathways.conv import CausalConv
from tilelli.train.trainer import cpu_name

RESULTS = results_dir(__file__)
SHAPES = [(16, 256, 320, 5), (16, 256, 512, 5), (16, 256, 512, 21)]  # (B, T, C, k)
PATHS = {"kernel": contextlib.nullcontext, "conv1d": kernel.kernel_disabled}


def step(layer: CausalConv, x: torch.Tensor, grad: torch.Tensor | None) -> float:
    """Seconds for one forward (and backward when `grad` is given) of the layer."""
    t0 = time.perf_counter()
    y = layer(x)  # (B, T, C)
    if grad is not None:
        y.backward(grad)
        x.grad = None
        layer.weight.grad = None
    return time.perf_counter() - t0


def measure(B: int, T: int, C: int, k: int, repeats: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    layer = CausalConv(C, k, TernaryOptions(quantize=False))
    x = torch.randn(B, T, C, requires_grad=True)
    grad = torch.randn(B, T, C)
    samples = {name: {"fwd": [], "fwd_bwd": []} for name in PATHS}
    for path in PATHS.values():  # warm-up
        with path():
            step(layer, x, grad)
    for _ in range(repeats):
        for name, path in PATHS.items():
            with path():
                samples[name]["fwd_bwd"].append(step(layer, x, grad))
                with torch.no_grad():
                    samples[name]["fwd"].append(step(layer, x, None))
    return {name: {key: round(1e3 * statistics.median(v), 3) for key, v in s.items()} for name, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not kernel.available():
        raise SystemExit("the causal conv kernel is unavailable (no compiler, build failed or TILELLI_NO_KERNEL set)")
    load_s = time.perf_counter() - t0

    rows = [{"B": B, "T": T, "C": C, "k": k, "ms": measure(B, T, C, k, args.repeats)} for B, T, C, k in SHAPES]
    result = {"benchmark": "causal_conv", "threads": args.threads, "repeats": args.repeats,
              "machine": cpu_name() or platform.machine(), "torch": torch.__version__,
              "kernel_load_s": round(load_s, 3), "rows": rows}
    lines = ["# One depthwise causal conv layer (FP32 CausalConv), C kernel vs F.conv1d", "",
             f"{result['machine']}, {args.threads} threads, median of {args.repeats} repeats, paths interleaved.", "",
             "| B x T | C | k | path | forward ms | forward + backward ms | vs conv1d |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        base = r["ms"]["conv1d"]["fwd_bwd"]
        for name, ms in r["ms"].items():
            lines.append(f"| {r['B']} x {r['T']} | {r['C']} | {r['k']} | {name} | {ms['fwd']:.2f} | "
                         f"{ms['fwd_bwd']:.2f} | {ms['fwd_bwd'] / base:.2f}x |")
    publish(args, "causal_conv", result, "\n".join(lines) + "\n", indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
