"""Re-check studies/model_sizes/results/model_sizes.json (docs/results/model_sizes.md).

Parameter counts must match exactly; bits per weight and file sizes within 1 %.
Exits 1 and names every number that does not reproduce.

    python -m studies.model_sizes.check
"""

from __future__ import annotations

import argparse
import json
import sys

from studies.checker import Checker
from studies.model_sizes.benchmark import RESULTS, markdown, measure

TOLERANCE = 0.01


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, before minutes of work
    checker = Checker()
    rows = json.loads((RESULTS / "model_sizes.json").read_text())["rows"]
    checker.page("model_sizes", markdown(rows))
    for row in rows:
        now = measure(row["name"])
        for key, want in row.items():
            if key != "name":
                exact = key in ("params", "ternary", "ternary_weights")
                checker.check(f"{row['name']} {key}", want, now.get(key), None if exact else TOLERANCE)
    return checker.finish("model-size")


if __name__ == "__main__":
    sys.exit(main())
