"""Re-check studies/probe/results/probe.json (the uncertainty probe) from the checkpoints it names:
rebuild the prompt sets from ../shared/data, re-measure every model, re-fit every detector,
compare.

Tolerances: every AUROC (raw signals, the control, the detectors, leave-one-regime-out, the
abstain decision, N3 on source and target) within 0.02 absolute: the sets, the bootstrap and
the detector's folds are seeded, so on one machine the numbers are identical, but greedy
generation and float sums can differ slightly between CPUs, and 0.02 is ~18 of the 900
in-domain/OOD pairs of a regime; N3 false- and true-positive rates within 0.07 (2 of 30
prompts); N1's win counts within 1 (a near tie can fall either way). Exactly: the sets'
sha256 (rebuilt, and as built under probe-sets/ where a benchmark run left them), their
sizes, which models and pairs were measured, and docs/results/probe.md must equal what
probe.json renders to. Exits 1
and names every number that does not reproduce. About as long as the benchmark: ~5 minutes
per model on one free CPU core.

    python -m studies.probe.check
    python -m studies.probe.check --results studies/meta/results --docs docs/results/meta   # the meta runs
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from studies.checker import Checker  # noqa: E402
from studies.common import DOCS, ROOT, SHARED  # noqa: E402
from studies.probe.benchmark import RESULTS, markdown_all, measure_model, n3_pairs  # noqa: E402
from tilelli.probe.report import rows_of  # noqa: E402
from tilelli.probe.sets import SET_FILES, build_sets  # noqa: E402

AUROC, RATE, WINS = 0.02, 0.07, 1


def check_tables(checker: Checker, what: str, pub: dict, now: dict) -> None:
    for regime, cell in pub.items():
        checker.check(f"{what} {regime}", cell["auroc"], now.get(regime, {}).get("auroc"), AUROC, absolute=True)


def check_model(checker: Checker, pub: dict, now: dict) -> None:
    name = pub["name"]
    now_rows = dict(rows_of(now, layers=True))
    for row, table in rows_of(pub, layers=True):
        check_tables(checker, f"{name} {row}", table, now_rows.get(row, {}))
    check_tables(checker, f"{name} leave-one-regime-out", pub["leave_one_regime_out"], now["leave_one_regime_out"])
    if "n1" in pub:
        for key in ("router_wins", "max_softmax_wins"):
            checker.check(f"{name} N1 {key}", pub["n1"][key], now.get("n1", {}).get(key), WINS, absolute=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="the directory holding probe.json (default "
                    "studies/probe/results)")
    ap.add_argument("--docs", type=Path, default=DOCS, help="the directory holding probe.md (default docs/results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    checker = Checker()
    published = json.loads((args.results / "probe.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        sets = Path(tmp) / "probe-sets"
        meta = build_sets(SHARED, sets)
        checker.check("set sizes", published["sets"]["counts"], meta["counts"])
        for name in SET_FILES:
            checker.check(f"{name} sha256 (rebuilt)", published["sets"]["sha256"][name], meta["sha256"][name])
            local = args.results / "probe-sets" / name  # git-ignored (third-party text): only where built
            if local.is_file():
                checker.check(f"{name} as built here = rebuilt", True, local.read_bytes() == (sets / name).read_bytes())
        rows, measured = [], []
        for pub in published["models"]:
            now, m = measure_model(ROOT / pub["checkpoint"], sets, published["limit"], 1)
            check_model(checker, pub, now)
            rows.append(now)
            measured.append(m)
        pairs = n3_pairs(rows, measured)
    key = [(t["trained_on"], t["applied_to"], t["detector"]) for t in published["n3"]]
    checker.check("N3 pairs", key, [(t["trained_on"], t["applied_to"], t["detector"]) for t in pairs])
    for pub, now in zip(published["n3"], pairs, strict=False):
        what = f"N3 {pub['trained_on']} -> {pub['applied_to']} ({pub['detector']})"
        for side in ("source", "target"):
            checker.check(f"{what} AUROC {side}", pub[side]["auroc"], now[side]["auroc"], AUROC, absolute=True)
            for rate in ("fpr", "tpr"):
                checker.check(f"{what} {rate} {side}", pub[side][rate], now[side][rate], RATE, absolute=True)
    block = markdown_all(published)
    checker.page("probe", block, args.docs)
    return checker.finish("probe")


if __name__ == "__main__":
    sys.exit(main())
