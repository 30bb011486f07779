"""Decode-speed measurements, all in one process so their ratios mean something on a noisy
machine: the reference GPT (no cache, cached), tilelli's PyTorch path and the native engine,
batch 1 and 8, prefill, speed by context position; plus start-up time and peak memory of
`tilelli generate` as a user runs it. `tilelli bench` and `studies/speed/decode_speed.py` use it.

Every figure is the median of `repeats` timed runs after one warm-up run; bytes/s counts
generated (or prefilled) bytes over wall time.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tilelli.kernels.build import USER_FLAGS

PROMPT = b"Once upon a time"


def median_rate(fn: Callable[[], int], repeats: int) -> float:
    """Median of `repeats` runs of fn() (which returns how many bytes it produced), in bytes/s."""
    fn()  # warm-up: builds, caches, page faults
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def decode_rate(decoder: Any, n: int, batch: int = 1, start: int = 0) -> Callable[[], int]:
    """A run of greedy decoding: `batch` sequences (prompts of different lengths), `n` bytes
    each; the short prompt pass is included (as a user sees it)."""
    def run() -> int:
        prompts = [(PROMPT * 200)[:max(start, len(PROMPT)) + 3 * i] for i in range(batch)]
        seqs = [decoder.new_sequence(len(p) + n) for p in prompts]
        logits = decoder.forward(seqs, prompts)
        for _ in range(n - 1):
            logits = decoder.forward(seqs, [bytes([int(b)]) for b in logits.argmax(axis=-1)])
        return n * batch
    return run


def decode_rate_at(decoder: Any, position: int, n: int = 50) -> Callable[[], int]:
    """Decoding `n` bytes starting at `position` (the prompt pass before it is not timed)."""
    def run() -> int:
        s = decoder.new_sequence(position + n)
        logits = decoder.forward([s], [(PROMPT * 200)[:position]])
        t = time.perf_counter()
        for _ in range(n):
            logits = decoder.forward([s], [bytes([int(logits.argmax())])])
        run.elapsed = time.perf_counter() - t  # type: ignore[attr-defined]
        return n
    return run


def timed_rate(fn: Callable[[], int], repeats: int) -> float:
    """Like median_rate, for runs that time their own inner part (`fn.elapsed`)."""
    fn()
    rates = []
    for _ in range(repeats):
        n = fn()
        rates.append(n / fn.elapsed)  # type: ignore[attr-defined]
    return statistics.median(rates)


def prefill_rate(decoder: Any, text: bytes) -> Callable[[], int]:
    def run() -> int:
        decoder.forward([decoder.new_sequence(len(text))], [text])
        return len(text)
    return run


def reference_rates(threads: int, repeats: int, n: int = 200) -> dict[str, float]:
    """The plain PyTorch GPT: greedy bytes/s with its KV cache and without (n/4 bytes: O(T^2))."""
    import torch

    from tilelli.infer.reference_gpt import ReferenceGPT

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ref = ReferenceGPT().eval()
    prompt = list(PROMPT)
    return {"reference_cached": median_rate(lambda: len(ref.greedy(prompt, n)), repeats),
            "reference_no_cache": median_rate(lambda: len(ref.greedy(prompt, n // 4, use_cache=False)), repeats)}


def checkpoint_rates(path: Path, threads: int, repeats: int, n: int = 200, prefill: bytes = b"",
                     int8: bool | None = None) -> dict[str, Any]:
    """The native engine and tilelli's PyTorch path (float) on one checkpoint (`int8`: the engine's
    integer path; None: its default, on for a ternary model)."""
    import torch

    from tilelli.infer import on_its_path
    from tilelli.infer.engine import NativeModel
    from tilelli.infer.torch_decoder import TorchDecoder
    from tilelli.model.checkpoint import load

    torch.set_num_threads(threads)
    fast = on_its_path(NativeModel.load(path, threads=threads), int8)
    slow = TorchDecoder(load(path))
    far = min(1500, fast.max_seq_len - 60)
    out = {
        "int8": fast.int8 and fast.ternary,
        "torch_path_b1": median_rate(decode_rate(slow, n // 2), repeats),
        "fast_b1": median_rate(decode_rate(fast, n), repeats),
        "fast_b8": median_rate(decode_rate(fast, n, batch=8), repeats),
        "fast_at_50": timed_rate(decode_rate_at(fast, 50), repeats),
        f"fast_at_{far}": timed_rate(decode_rate_at(fast, far), repeats),
        "far_position": far,
        "resident_weight_bytes": fast.resident_bytes,
        "bits_per_ternary_weight": fast.bits_per_ternary_weight,
    }
    if prefill:
        out["fast_prefill"] = median_rate(prefill_rate(fast, prefill), repeats)
        out["prefill_bytes"] = len(prefill)
    return out


# Runs in a fresh small process that starts the command and reports on it. Why the extra
# process: a child's peak RSS (ru_maxrss) starts at its parent's size when it is forked, and
# this benchmark's own process holds torch (~400 MB); a small launcher's children start small.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
cmd, prompt_len = json.loads(sys.argv[1]), int(sys.argv[2])
t = time.perf_counter()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
got = b""
while len(got) <= prompt_len:
    chunk = os.read(p.stdout.fileno(), 4096)
    if not chunk:
        break
    got += chunk
first = time.perf_counter() - t
p.stdout.read()
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"first_byte_s": first, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "exit": os.waitstatus_to_exitcode(status)}))
"""


def cli_startup(checkpoint: Path | None, threads: int, repeats: int) -> dict[str, float]:
    """`tilelli generate` as a user runs it, in a fresh process each time: seconds until the
    first generated byte is on its stdout, and the process's peak RSS (MB)."""
    import json

    cmd = [sys.executable, "-m", "tilelli", "generate", "--prompt", PROMPT.decode(), "--max-new-tokens", "64",
           "--temperature", "0", "--threads", str(threads)]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    runs = []
    for _ in range(repeats + 1):
        out = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(cmd), str(len(PROMPT))],
                             capture_output=True, text=True, check=True)
        run = json.loads(out.stdout)
        if run["exit"] != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {run['exit']}")
        runs.append(run)
    return {k: statistics.median(r[k] for r in runs[1:]) for k in ("first_byte_s", "peak_rss_mb")}


# The instruction sets that decide which code paths the engine and llama.cpp take.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")


def cpu_identity() -> dict[str, Any]:
    """What makes two speed records comparable figure for figure: the model name, the family/model
    numbers (a cloud CPU may only say "AMD EPYC", which Zen 3 and Zen 4 share) and the instruction
    sets above. Ratios measured in one run hold anywhere; absolute figures only on the same CPU.
    Read from /proc/cpuinfo here rather than through the trainer's cpu_name, which imports torch."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    name = fields.get("model name") or platform.processor() or platform.machine()
    return {"cpu": name, "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            "isa": {f: f in flags for f in ISA_FLAGS}}


def same_cpu(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records' `machine` entries name the same CPU (see cpu_identity) and the same
    native build flags (an AVX2-only build on an AVX-512 CPU is another machine's figures)."""
    return all(a.get(k) == b.get(k) for k in ("cpu", "cpu_family_model", "isa", "native_flags"))


def load_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """The CPU, and the native build's extra flags when $TILELLI_CFLAGS sets some (an AVX2-only
    build on an AVX-512 CPU measures what the AVX2 machine runs, not this CPU's best)."""
    extra = {"native_flags": os.environ[USER_FLAGS]} if os.environ.get(USER_FLAGS) else {}
    return {**cpu_identity(), "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "load_1min_at_start": load_1min(), **extra}


def cpu_line(m: dict[str, Any]) -> str:
    """The CPU of a `machine()` record as a page names it: a speed table means little without it."""
    if "isa" not in m:  # a record from before CPUs were named in full
        return f"{m['cpu']} (family/model and instruction sets not recorded)"
    isa = ", ".join(f for f, on in m["isa"].items() if on) or "none of " + ", ".join(ISA_FLAGS)
    built = f", Tilelli's engine built with {m['native_flags']}" if m.get("native_flags") else ""
    return f"{m['cpu']} (family/model {m['cpu_family_model']}; {isa}{built})"


def run_all(checkpoints: list[Path], threads: int, repeats: int, prefill: bytes,
            startup_checkpoint: Path | None = None, int8: bool | None = None) -> dict[str, Any]:
    """Everything above in one process (see module doc); the reference is measured first."""
    result: dict[str, Any] = {"machine": machine(), "threads": threads, "repeats": repeats,
                              "reference": reference_rates(threads, repeats), "models": {}}
    for path in checkpoints:
        rates = checkpoint_rates(path, threads, repeats, prefill=prefill, int8=int8)
        ref = result["reference"]["reference_cached"]
        rates["fast_b1_vs_reference"] = rates["fast_b1"] / ref
        rates["fast_b8_vs_b1"] = rates["fast_b8"] / rates["fast_b1"]
        rates["far_vs_50"] = rates[f"fast_at_{rates['far_position']}"] / rates["fast_at_50"]
        if prefill:
            rates["prefill_vs_b1"] = rates["fast_prefill"] / rates["fast_b1"]
        result["models"][path.name] = rates
    result["startup"] = cli_startup(startup_checkpoint, threads, repeats)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The table the README quotes."""
    ref = result["reference"]
    m = result["machine"]
    int8 = " (int8: the integer path)" if any(r.get("int8") for r in result["models"].values()) else ""
    lines = [f"Greedy decoding{int8}, {result['threads']} thread(s), {cpu_line(m)}, "
             f"median of {result['repeats']} runs, "
             f"1-min load {m['load_1min_at_start']:.2f} at start; bytes/s. Reference GPT (plain PyTorch, d=320, "
             f"8 layers, KV cache): {ref['reference_cached']:,.0f} cached, {ref['reference_no_cache']:,.0f} "
             "without cache.", "",
             "| model | PyTorch path b1 | fast b1 | vs reference | fast b8 (total) | b8 / b1 | prefill | "
             "prefill / b1 | at pos 50 | far pos | far / 50 | resident weights | bits / ternary weight |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        far = r["far_position"]
        bits = f"{r['bits_per_ternary_weight']:.3f}" if r["bits_per_ternary_weight"] else "—"
        path = " (int8)" if r.get("int8") else ""
        lines.append(f"| `{name}`{path} | {r['torch_path_b1']:,.0f} | {r['fast_b1']:,.0f} | "
                     f"{r['fast_b1_vs_reference']:.2f}x | {r['fast_b8']:,.0f} | {r['fast_b8_vs_b1']:.2f}x | "
                     f"{r.get('fast_prefill', 0):,.0f} | {r.get('prefill_vs_b1', 0):.2f}x | "
                     f"{r['fast_at_50']:,.0f} | {r[f'fast_at_{far}']:,.0f} at {far} | {r['far_vs_50']:.2f}x | "
                     f"{r['resident_weight_bytes'] / 1e6:.1f} MB | {bits} |")
    s = result["startup"]
    lines += ["", f"`tilelli generate` (default model, fresh process): first generated byte after "
              f"{s['first_byte_s']:.3f} s, peak RSS {s['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"
