"""Re-check benchmarks/results/base.json (the README's base-models block: the long runs, the QAT
sweep, the seeded A/B and its Welch test).

It recomputes every number from the committed run records under benchmarks/results/runs/base/
(the metrics each training run logged) and compares them with base.json to a relative 1e-9, and
the README's base-models block must equal the table those records give. This catches an edited
table or a changed statistic; re-training one of these runs takes 70-90 minutes on one CPU
thread (the command is in its run.json). Exits 1 and names every number that does not reproduce.

    python reproduce/base_models.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from base_models import BASE_COPIES, MARKERS, README, RESULTS, analyse, markdown  # noqa: E402
from checker import Checker  # noqa: E402
from samples import readme_with  # noqa: E402

ARITHMETIC = 1e-9


def main() -> int:
    checker = Checker()
    recomputed = analyse(BASE_COPIES)
    checker.check_json(json.loads((RESULTS / "base.json").read_text()), recomputed, ARITHMETIC)
    readme = README.read_text()
    checker.check("README base-models block = the run records' table", True,
                  readme == readme_with(markdown(recomputed), readme, MARKERS))
    return checker.finish("base-model")


if __name__ == "__main__":
    sys.exit(main())
