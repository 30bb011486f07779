"""Re-check studies/quality/results/quality.json (docs/results/quality.md) from the shipped checkpoints.

Re-prepares the TinyStories slices from ../shared/data, re-evaluates every checkpoint under
checkpoints/, and compares: params, storage, step, tokens and epochs exactly; valid and OOD
bpb within 0.2 % (float reductions differ slightly between CPUs); the CI bounds within 1 %;
each ternary model's bpb ratio to Lite FP32 (its ternary gap) within 0.4 %.
Exits 1 and names every number that does not reproduce. About 15 minutes on 2 CPU cores.

    python -m studies.quality.check_quality
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from studies.checker import Checker
from studies.quality.quality import RESULTS, measure, prepared_data, table, ternary_ratios
from tilelli.model.checkpoint_files import SHIPPED_DIR

BPB_TOLERANCE, CI_TOLERANCE, RATIO_TOLERANCE = 0.002, 0.01, 0.004
EXACT = ("weights_sha256", "config", "params", "weights", "bits_per_weight", "checkpoint_kb", "step", "tokens",
         "epochs")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, before minutes of work
    torch.set_num_threads(2)
    checker = Checker()
    result = json.loads((RESULTS / "quality.json").read_text())
    published, measured = result["rows"], []
    with tempfile.TemporaryDirectory() as tmp:
        meta = prepared_data(Path(tmp))
        for row in published:
            now = measure(SHIPPED_DIR / row["name"], Path(tmp), meta)
            measured.append(now)
            for key in EXACT:
                checker.check(f"{row['name']} {key}", row[key], now[key])
            for split, pub, got in [("valid", row["valid"], now["valid"]),
                                    *[(f"OOD {k}", v, now["ood"][k]) for k, v in row["ood"].items()]]:
                checker.check(f"{row['name']} {split} bpb", pub["bpb"], got["bpb"], BPB_TOLERANCE)
                for i, end in enumerate(("low", "high")):
                    checker.check(f"{row['name']} {split} CI {end}", pub["ci"][i], got["ci"][i], CI_TOLERANCE)
    checker.page("quality", table(published))
    ratios = ternary_ratios(measured)
    for name, ratio in result["ternary_over_fp32"].items():
        checker.check(f"{name} valid bpb / Lite FP32's", ratio, ratios.get(name), RATIO_TOLERANCE)
    return checker.finish("quality")


if __name__ == "__main__":
    sys.exit(main())
