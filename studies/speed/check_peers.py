"""Re-check the peer comparison (studies/speed/results/peers.json): Tilelli's engine against
llama.cpp on a same-size model, re-run into a temporary folder.

- **Targets** (issue 26), ratios measured within one run, so they mean the same on any CPU:
  per column, Tilelli ternary >= 1.5x the fastest llama.cpp quantized type, and Lite FP32 and
  vanilla (bf16 weights) >= 1x llama.cpp BF16. The README claims neither, so a target missed
  prints 'not reached' and does not fail the check.
- **Exact published figures**, only on the record's CPU: every ratio within 30 %.

Without the `peers` extra (llama-cpp-python) nothing can be re-measured: the published record's
targets are reported and the page checked against it.

    python -m studies.speed.check_peers [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from studies.checker import Checker
from studies.common import rerun
from studies.speed.peers import RESULTS, TERNARY, markdown

# what the README claims of each ratio family: nothing yet (its Status lists them as open)
CLAIMED = {"best llama.cpp quant": False, "llama.cpp BF16": False}


def check(published: dict, now: dict, checker: Checker) -> None:
    """Targets on `now`; `published`'s ratios only when `now` ran on the same CPU."""
    for what, cols in now["ratios"].items():
        minimum = 1.5 if what.startswith(TERNARY) else 1.0
        claimed = next(c for family, c in CLAIMED.items() if what.endswith(family))
        for col, c in cols.items():
            checker.target(f"{what}, {col}", c["ratio"], minimum, claimed)
    if now is published or not checker.same_cpu(published["machine"], now["machine"]):
        return
    for what, cols in published["ratios"].items():
        for col, c in cols.items():
            checker.check(f"{what}, {col}", c["ratio"], now["ratios"][what][col]["ratio"], 0.30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="shuffled rounds of the re-run (default 3)")
    args = ap.parse_args()
    if not (RESULTS / "peers.json").is_file():
        print("no published peer record yet: python -m studies.speed.peers writes it (the README claims nothing of it)")
        return 0
    published = json.loads((RESULTS / "peers.json").read_text())
    checker = Checker()
    checker.page("peers", markdown(published))
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python not installed (pip install -e '.[peers]'): not re-measured; "
              "the published record's targets:")
        check(published, published, checker)
        return checker.finish("peer")
    with tempfile.TemporaryDirectory() as tmp:
        rerun("studies.speed.peers", "--out", tmp, "--docs", tmp, "--repeats", str(args.repeats),
              "--tokens", str(published["decode_bytes"]))
        now = json.loads((Path(tmp) / "peers.json").read_text())
    check(published, now, checker)
    return checker.finish("peer")


if __name__ == "__main__":
    sys.exit(main())
