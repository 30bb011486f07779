"""Re-check the generation samples: re-generate them from the shipped checkpoints and compare
byte for byte with studies/quality/results/samples.json, and docs/results/samples.md with it.
Exits 1 when any differs.

    python -m studies.quality.check_samples
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from studies.checker import Checker
from studies.quality.samples import RESULTS, markdown, samples


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, before minutes of work
    torch.set_num_threads(2)
    checker = Checker()
    published = json.loads((RESULTS / "samples.json").read_text())["samples"]
    now = samples()
    checker.check("number of samples", len(published), len(now))
    for pub, got in zip(published, now, strict=False):
        what = f"{pub['checkpoint']} '{pub['prompt'][:20]}'"
        checker.check(f"{what} text identical", True, pub["text"] == got["text"])
        checker.check(f"{what} mean confidence", pub["mean_confidence"], got["mean_confidence"], 0.001)
    checker.page("samples", markdown(published))
    return checker.finish("sample")


if __name__ == "__main__":
    sys.exit(main())
