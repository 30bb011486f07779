"""Re-check the bpb-by-position table the README quotes (benchmarks/results/context.json) by
re-running benchmarks/context.py into a temporary folder: every bucket's bpb within 0.2 % and
CI bounds within 1 % (the same windows and the same model give the same numbers up to float
summation order). Exits 1 and names what failed.

    python reproduce/context.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from checker import Checker

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    published = json.loads((RESULTS / "context.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "context.py"), "--out", tmp,
                        "--windows", str(published["windows"])], check=True, stdout=subprocess.DEVNULL)
        now = json.loads((Path(tmp) / "context.json").read_text())
    checker = Checker()
    for name, model in published["models"].items():
        for pub, got in zip(model["buckets"], now["models"][name]["buckets"], strict=True):
            checker.check(f"{name} positions {pub['positions']} bpb", pub["bpb"], got["bpb"], 0.002)
            for i, end in enumerate(("low", "high")):
                checker.check(f"{name} positions {pub['positions']} CI {end}", pub["ci"][i], got["ci"][i], 0.01)
    return checker.finish("bpb-by-position")


if __name__ == "__main__":
    sys.exit(main())
