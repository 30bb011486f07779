"""Re-check the decode-speed ratios (studies/speed/results/decode_speed.json) by
re-running the benchmark into a temporary folder.

Ratios measured in one process are what we claim: the native engine against the plain PyTorch
GPT (batch 1), batch 8 against batch 1, and far-position against position-50 decoding, each
within 30 % (relative; decoding on a shared 2-core machine swings). Absolute bytes/s, start-up
time and RSS depend on the machine: only checked with --absolute (start-up within 50 %, RSS
within 20 %). Exits 1 and names what failed.

    python -m studies.speed.check_decode [--absolute]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from studies.checker import Checker
from studies.common import rerun
from studies.speed.decode_speed import RESULTS
from tilelli.infer.bench import markdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--absolute", action="store_true", help="also check start-up time and peak RSS")
    args = ap.parse_args()
    published = json.loads((RESULTS / "decode_speed.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        rerun("studies.speed.decode_speed", "--out", tmp, "--docs", tmp, "--threads", str(published["threads"]),
              "--repeats", "3")
        now = json.loads((Path(tmp) / "decode_speed.json").read_text())
    checker = Checker()
    checker.page("decode_speed", markdown(published))
    for name, pub in published["models"].items():
        got = now["models"][name]
        for key in ("fast_b1_vs_reference", "fast_b8_vs_b1", "far_vs_50"):
            checker.check(f"{name} {key}", pub[key], got[key], 0.30)
    if args.absolute:
        checker.check("first byte s", published["startup"]["first_byte_s"], now["startup"]["first_byte_s"], 0.5)
        checker.check("peak RSS MB", published["startup"]["peak_rss_mb"], now["startup"]["peak_rss_mb"], 0.2)
    return checker.finish("decode speed")


if __name__ == "__main__":
    sys.exit(main())
