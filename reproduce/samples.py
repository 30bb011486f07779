"""Re-check the README's generation samples: re-generate them from the shipped checkpoints and
compare byte for byte with benchmarks/results/samples.json, and the README block with samples.md.
Exits 1 when any differs.

    python reproduce/samples.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from checker import Checker  # noqa: E402
from samples import README, RESULTS, markdown, readme_with, samples  # noqa: E402


def main() -> int:
    torch.set_num_threads(2)
    checker = Checker()
    published = json.loads((RESULTS / "samples.json").read_text())["samples"]
    now = samples()
    checker.check("number of samples", len(published), len(now))
    for pub, got in zip(published, now, strict=False):
        what = f"{pub['checkpoint']} '{pub['prompt'][:20]}'"
        checker.check(f"{what} text identical", True, pub["text"] == got["text"])
        checker.check(f"{what} mean confidence", pub["mean_confidence"], got["mean_confidence"], 0.001)
    readme = README.read_text()
    checker.check("README samples block = samples.md", True, readme == readme_with(markdown(published), readme))
    return checker.finish("sample")


if __name__ == "__main__":
    sys.exit(main())
