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
from model_sizes import RESULTS, measure  # noqa: E402

TOLERANCE = 0.01


def main() -> int:
    published = json.loads((RESULTS / "model_sizes.json").read_text())["rows"]
    failures = []
    for row in published:
        now = measure(row["name"])
        for key, want in row.items():
            if key == "name":
                continue
            got = now.get(key)
            exact = key in ("params", "ternary", "ternary_weights")
            ok = got == want if exact else got is not None and abs(got - want) <= TOLERANCE * abs(want)
            status = "ok" if ok else "FAIL"
            print(f"{status:4} {row['name']:22} {key:16} published {want}  measured {got}")
            if not ok:
                failures.append(f"{row['name']} {key}")
    if failures:
        print(f"{len(failures)} number(s) did not reproduce: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("all model-size numbers reproduce")
    return 0


if __name__ == "__main__":
    sys.exit(main())
