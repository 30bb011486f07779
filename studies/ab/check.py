"""Re-check studies/ab/results/ab.json (docs/results/ab.md: sweep, seeds, Welch, gaps).

By default it recomputes every number from the committed run records under studies/ab/records/
(the metrics each training run logged) and compares them with ab.json, to a relative 1e-9: this
catches an edited table or a changed statistic.
`--retrain RUN` also re-trains one recorded run from its run.json (same settings, data
re-prepared from ../shared/data) and compares its final valid bpb within 1 %: a 200-step run
takes ~15 minutes on 2 CPU cores. Exits 1 and names every number that does not reproduce.

    python -m studies.ab.check
    python -m studies.ab.check --retrain vanilla-fp32-adamw-0.002-s1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from studies.ab.analyse import RESULTS, RUN_COPIES, analyse, markdown
from studies.checker import Checker
from studies.quality.quality import prepared_data
from tilelli.train.runs import read_metrics
from tilelli.train.trainer import TrainConfig, Trainer

ARITHMETIC, RETRAIN = 1e-9, 0.01


def retrain(name: str, checker: Checker) -> None:
    """Train the recorded run again from scratch and compare its final valid bpb."""
    info = json.loads((RUN_COPIES / name / "run.json").read_text())
    _, valid = read_metrics(RUN_COPIES / name)
    with tempfile.TemporaryDirectory() as tmp:
        meta = prepared_data(Path(tmp) / "data")
        if meta["train"]["sha256"] != info["data"]["train_sha256"]:
            sys.exit(f"error: re-prepared train data differs from what {name} trained on")
        train = {k: v for k, v in info["train"].items() if k in TrainConfig.__dataclass_fields__}
        cfg = TrainConfig(**{**train, "data": str(Path(tmp) / "data"), "out": str(Path(tmp) / "run"),
                             "resume": False, "quiet": True})
        Trainer(cfg).run()
        measured = read_metrics(Path(tmp) / "run")[1][-1]["valid_bpb"]
    checker.check(f"{name} final valid bpb (retrained)", valid[-1]["valid_bpb"], measured, RETRAIN)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain", action="append", default=[], metavar="RUN", help="also re-train this run")
    args = ap.parse_args()
    checker = Checker()
    published = json.loads((RESULTS / "ab.json").read_text())
    checker.check_json(published, analyse(RUN_COPIES), ARITHMETIC)
    checker.page("ab", markdown(published))
    for name in args.retrain:
        retrain(name, checker)
    return checker.finish("A/B")


if __name__ == "__main__":
    sys.exit(main())
