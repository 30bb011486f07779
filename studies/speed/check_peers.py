"""Re-check the peer comparison (studies/speed/results/peers.json): Tilelli's engine against
llama.cpp on a same-size model, re-run into a temporary folder.

- **Targets** (issue 26), ratios measured within one run, so they mean the same on any CPU:
  per column, Tilelli ternary >= 1.5x the fastest llama.cpp quantized type, and Lite FP32 and
  vanilla (bf16 weights) >= 1x llama.cpp BF16. The README claims neither, so a target missed
  prints 'not reached' and does not fail the check.
- **Exact published figures**, only on the record's CPU: every ratio within 30 %.

Without the `peers` extra (llama-cpp-python) nothing can be re-measured: the published record's
targets are reported and the page checked against it. `--record avx2` re-checks the AVX2-only
record (results/avx2/): re-run with its TILELLI_CFLAGS, and re-measured only where the installed
llama.cpp was built as it was (its system info: GGML_AVX512=OFF).

    python -m studies.speed.check_peers [--repeats 3] [--record avx2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from studies.checker import Checker
from studies.common import DOCS, rerun
from studies.speed.peers import RESULTS, TERNARY, markdown
from tilelli.kernels.build import USER_FLAGS

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
    ap.add_argument("--record", default="", help="a record in a folder of results/ (avx2: the AVX2-only builds)")
    args = ap.parse_args()
    results = RESULTS / args.record
    if not (results / "peers.json").is_file():
        print(f"no peer record in {results}: python -m studies.speed.peers writes it")
        return 0
    published = json.loads((results / "peers.json").read_text())
    checker = Checker()
    checker.page("peers", markdown(published), DOCS / args.record)
    why_not = None
    if importlib.util.find_spec("llama_cpp") is None:
        why_not = "llama-cpp-python not installed (pip install -e '.[peers]')"
    else:
        import llama_cpp

        built = llama_cpp.llama_print_system_info().decode().strip()
        if built != published["llama_cpp"]["system_info"]:
            why_not = f"the installed llama.cpp is built otherwise ({built}) than the record's"
    if why_not:
        print(f"{why_not}: not re-measured; the published record's targets:")
        check(published, published, checker)
        return checker.finish("peer")
    os.environ[USER_FLAGS] = published["machine"].get("native_flags", "")  # the record's build of the engine
    with tempfile.TemporaryDirectory() as tmp:
        rerun("studies.speed.peers", "--out", tmp, "--docs", tmp, "--repeats", str(args.repeats),
              "--tokens", str(published["decode_bytes"]))
        now = json.loads((Path(tmp) / "peers.json").read_text())
    check(published, now, checker)
    return checker.finish("peer")


if __name__ == "__main__":
    sys.exit(main())
