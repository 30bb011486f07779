"""Re-check studies/base_models/results/base.json (docs/results/base.md: the long runs, the QAT
sweep, the continuations, the seeded A/B and its Welch test).

It recomputes every number from the committed run records under studies/base_models/records/
(the metrics each training run logged) and compares them with base.json to a relative 1e-9, and
docs/results/base.md must equal the table those records give. This catches an edited
table or a changed statistic; re-training one of these runs takes 70-90 minutes on one CPU
thread (the command is in its run.json). Exits 1 and names every number that does not reproduce.

    python -m studies.base_models.check
"""

from __future__ import annotations

import argparse
import json
import sys

from studies.base_models.analyse import BASE_COPIES, RESULTS, analyse, markdown
from studies.checker import Checker

ARITHMETIC = 1e-9


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, before minutes of work
    checker = Checker()
    recomputed = analyse(BASE_COPIES)
    checker.check_json(json.loads((RESULTS / "base.json").read_text()), recomputed, ARITHMETIC)
    checker.page("base", markdown(recomputed))
    return checker.finish("base-model")


if __name__ == "__main__":
    sys.exit(main())
