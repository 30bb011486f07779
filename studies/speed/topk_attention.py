"""Forward + backward time of one attention layer: top-k C kernel, top-k PyTorch path, dense SDPA.

Shapes of the Lite model's attention (batch 16, 8 heads, T=256, d_head 40, top_k 16) by
default. q, k, v are the transposed views of one (B, T, 3*H*d) projection output and the
result is reshaped back to (B, T, H*d), as in `CausalAttention`, so copies a path causes
are counted. All paths run in turn within every repeat (the machine may be shared); the
median of the repeats is reported. Writes studies/speed/results/topk_attention.json
and docs/results/topk_attention.md.

    python -m studies.speed.topk_attention [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from studies.common import add_output_args, publish, results_dir
from tilelli.kernels import topk_attention as kernel
from tilelli.model.pathways.attention import topk_causal_attention
from tilelli.train.trainer import cpu_name

RESULTS = results_dir(__file__)


def paths(top_k: int) -> dict[str, Callable]:
    def pytorch(q, k, v):
        with kernel.kernel_disabled():
            return topk_causal_attention(q, k, v, top_k)

    return {"kernel": lambda q, k, v: kernel.topk_attention(q, k, v, top_k),
            "pytorch": pytorch,
            "dense_sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}


def step(fn: Callable, qkv: torch.Tensor, H: int, d: int, grad: torch.Tensor | None) -> float:
    """Seconds for one forward (and backward when `grad` is given) from the projection output."""
    B, T, _ = qkv.shape
    t0 = time.perf_counter()
    q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in qkv.split(H * d, dim=-1))  # (B, H, T, d)
    y = fn(q, k, v).transpose(1, 2).reshape(B, T, H * d)  # (B, T, H*d)
    if grad is not None:
        y.backward(grad)
        qkv.grad = None
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--d-head", type=int, default=40)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, H, T, d = args.batch_size, args.heads, args.seq_len, args.d_head
    t0 = time.perf_counter()
    if not kernel.available():
        raise SystemExit("the top-k kernel is unavailable (no compiler, build failed or TILELLI_NO_KERNEL set)")
    load_s = time.perf_counter() - t0

    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3 * H * d, requires_grad=True)
    grad = torch.randn(B, T, H * d)
    fns = paths(args.top_k)
    samples = {name: {"fwd": [], "fwd_bwd": []} for name in fns}
    for fn in fns.values():  # warm-up
        step(fn, qkv, H, d, grad)
    for _ in range(args.repeats):
        for name, fn in fns.items():
            samples[name]["fwd_bwd"].append(step(fn, qkv, H, d, grad))
            with torch.no_grad():
                samples[name]["fwd"].append(step(fn, qkv, H, d, None))
    rows = {name: {k: round(1e3 * statistics.median(v), 2) for k, v in s.items()} for name, s in samples.items()}
    result = {"benchmark": "topk_attention", "shape": {"B": B, "H": H, "T": T, "d": d, "top_k": args.top_k},
              "threads": args.threads, "repeats": args.repeats, "machine": cpu_name() or platform.machine(),
              "torch": torch.__version__, "kernel_load_s": round(load_s, 3), "ms": rows}
    base = rows["dense_sdpa"]["fwd_bwd"]
    lines = [f"# One attention layer, B={B} H={H} T={T} d={d} top_k={args.top_k}", "",
             f"{result['machine']}, {args.threads} threads, median of {args.repeats} repeats, paths interleaved.", "",
             "| path | forward ms | forward + backward ms | vs dense SDPA |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['fwd']:.2f} | {r['fwd_bwd']:.2f} | {r['fwd_bwd'] / base:.2f}x |")
    publish(args, "topk_attention", result, "\n".join(lines) + "\n", indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
