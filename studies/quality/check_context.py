"""Re-check the bpb-by-position table (studies/quality/results/context.json) by
re-running studies/quality/context.py into a temporary folder: every bucket's bpb within 0.2 % and
CI bounds within 1 % (the same windows and the same model give the same numbers up to float
summation order). Exits 1 and names what failed.

    python -m studies.quality.check_context
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from studies.checker import Checker
from studies.common import rerun
from studies.quality.context import RESULTS, markdown


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, before minutes of work
    published = json.loads((RESULTS / "context.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        rerun("studies.quality.context", "--out", tmp, "--docs", tmp, "--windows", str(published["windows"]))
        now = json.loads((Path(tmp) / "context.json").read_text())
    checker = Checker()
    for name, model in published["models"].items():
        for pub, got in zip(model["buckets"], now["models"][name]["buckets"], strict=True):
            checker.check(f"{name} positions {pub['positions']} bpb", pub["bpb"], got["bpb"], 0.002)
            for i, end in enumerate(("low", "high")):
                checker.check(f"{name} positions {pub['positions']} CI {end}", pub["ci"][i], got["ci"][i], 0.01)
    checker.page("context", markdown(published))
    return checker.finish("bpb-by-position")


if __name__ == "__main__":
    sys.exit(main())
