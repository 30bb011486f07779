"""Decode speed of every shipped checkpoint against a plain PyTorch GPT, in one process.

Measures (see tilelli/infer/bench.py): the reference GPT with and without its KV cache,
tilelli's PyTorch path, the native engine at batch 1 and 8, prefill of a 1,000-byte prompt,
decoding at position 50 and far into the context, and `tilelli generate`'s first-byte time
and peak RSS in a fresh process. Pause other work (training) while it runs.

    python benchmarks/decode_speed.py                  # writes benchmarks/results/decode_speed.{json,md}
    python benchmarks/decode_speed.py --threads 1 --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from tilelli import __version__
from tilelli.infer.bench import markdown, run_all
from tilelli.model.checkpoint_files import SHIPPED_DIR

RESULTS = Path(__file__).parent / "results"
MODELS = ("tilelli-lite-ternary", "tilelli-lite-fp32", "vanilla-fp32")
VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / \
    "TinyStories-valid.head800KB.no-story-delims.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    prefill = VALID.read_bytes()[:1000] if VALID.is_file() else (b"Once upon a time, there was a dog. " * 30)[:1000]
    result = run_all([SHIPPED_DIR / m for m in MODELS], args.threads, args.repeats, prefill)
    result.update(version=__version__, when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "decode_speed.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
