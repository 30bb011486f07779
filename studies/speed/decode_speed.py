"""Decode speed of every shipped checkpoint against a plain PyTorch GPT, in one process.

Measures (see tilelli/infer/bench.py): the reference GPT with and without its KV cache,
tilelli's PyTorch path, the native engine at batch 1 and 8, prefill of a 1,000-byte prompt,
decoding at position 50 and far into the context, and `tilelli generate`'s first-byte time
and peak RSS in a fresh process. Pause other work (training) while it runs.

    python -m studies.speed.decode_speed                  # writes results/decode_speed.json, docs/results/*.md
    python -m studies.speed.decode_speed --threads 1 --out /tmp/x
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone

from studies.common import VALID_TEXT as VALID
from studies.common import add_output_args, publish, results_dir
from tilelli import __version__
from tilelli.infer.bench import markdown, run_all
from tilelli.model.checkpoint_files import SHIPPED_DIR

RESULTS = results_dir(__file__)
MODELS = ("tilelli-lite-ternary", "tilelli-lite-fp32", "vanilla-fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=5)
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    prefill = VALID.read_bytes()[:1000] if VALID.is_file() else (b"Once upon a time, there was a dog. " * 30)[:1000]
    result = run_all([SHIPPED_DIR / m for m in MODELS], args.threads, args.repeats, prefill)
    result.update(version=__version__, when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    publish(args, "decode_speed", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
