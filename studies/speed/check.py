"""Re-check the training-speed numbers (studies/speed/results/train_speed.json,
topk_attention.json, causal_conv.json, muon_step.json) by re-running the benchmarks into a
temporary folder.

Ratios measured in one process are what we claim, so they get the tight tolerance:
  - training tokens/s of each config relative to vanilla-fp32: within 10 % (relative)
  - top-k kernel fwd+bwd time relative to dense SDPA: within 30 %, and the conv kernel
    relative to F.conv1d within 50 % (single small ops swing most on a shared 2-core machine)
  - torch's Muon step relative to tilelli's: within 50 %
Absolute tokens/s depend on the machine and its load: within 25 %, and only meaningful on
the machine kind the results name (2 vCPU AMD EPYC). Exits 1 and names what failed.

    python -m studies.speed.check [--skip-absolute]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from studies.checker import Checker
from studies.common import rerun, results_dir

RESULTS = results_dir(__file__)


def measured(stem: str, out: Path, *extra: str) -> dict:
    """Run studies/speed/STEM.py into `out` and read what it measured."""
    rerun(f"studies.speed.{stem}", "--out", str(out), "--docs", str(out), *extra)
    return json.loads((out / f"{stem}.json").read_text())


def train_numbers(result: dict) -> dict[str, tuple[float, float]]:
    """(ratio to vanilla, tokens/s) per config, CPU."""
    cpu = result["results"]["cpu"]
    base = cpu["vanilla-fp32"]["tokens_per_s"]
    return {name: (r["tokens_per_s"] / base, r["tokens_per_s"]) for name, r in cpu.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-absolute", action="store_true", help="check only the ratios (another kind of machine)")
    args = ap.parse_args()
    checker = Checker()
    check = checker.check
    with tempfile.TemporaryDirectory() as tmp:
        new = train_numbers(measured("train_speed", Path(tmp), "--repeats", "3"))
        for name, (ratio, tps) in train_numbers(json.loads((RESULTS / "train_speed.json").read_text())).items():
            check(f"{name} tokens/s vs vanilla", ratio, new[name][0], 0.10)
            if not args.skip_absolute:
                check(f"{name} tokens/s", tps, new[name][1], 0.25)
        pub = json.loads((RESULTS / "topk_attention.json").read_text())["ms"]
        now = measured("topk_attention", Path(tmp))["ms"]
        for path in ("kernel", "pytorch"):
            check(f"top-k {path} fwd+bwd vs dense SDPA", pub[path]["fwd_bwd"] / pub["dense_sdpa"]["fwd_bwd"],
                  now[path]["fwd_bwd"] / now["dense_sdpa"]["fwd_bwd"], 0.30)
        pub_conv = json.loads((RESULTS / "causal_conv.json").read_text())["rows"]
        now_conv = measured("causal_conv", Path(tmp))["rows"]
        for p, n in zip(pub_conv, now_conv, strict=True):
            check(f"conv C={p['C']} k={p['k']} kernel fwd+bwd vs conv1d",
                  p["ms"]["kernel"]["fwd_bwd"] / p["ms"]["conv1d"]["fwd_bwd"],
                  n["ms"]["kernel"]["fwd_bwd"] / n["ms"]["conv1d"]["fwd_bwd"], 0.50)
        pub_muon = json.loads((RESULTS / "muon_step.json").read_text())["torch_over_tilelli"]
        check("torch Muon step / tilelli Muon step", pub_muon, measured("muon_step", Path(tmp))["torch_over_tilelli"],
              0.50)
    return checker.finish("speed")


if __name__ == "__main__":
    sys.exit(main())
