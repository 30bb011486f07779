"""Re-check benchmarks/results/model_sizes.json (quoted in the README).

Parameter counts must match exactly; bits per weight and file sizes within 1 %.
Exits 1 and names every number that does not reproduce.

    python reproduce/model_sizes.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from checker import Checker  # noqa: E402
from model_sizes import RESULTS, measure  # noqa: E402

TOLERANCE = 0.01


def main() -> int:
    checker = Checker()
    for row in json.loads((RESULTS / "model_sizes.json").read_text())["rows"]:
        now = measure(row["name"])
        for key, want in row.items():
            if key != "name":
                exact = key in ("params", "ternary", "ternary_weights")
                checker.check(f"{row['name']} {key}", want, now.get(key), None if exact else TOLERANCE)
    return checker.finish("model-size")


if __name__ == "__main__":
    sys.exit(main())
