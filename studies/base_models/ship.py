"""Export the base runs of `base_runs.py` into checkpoints/: the models that ship (issue 10).

- `tilelli-lite-fp32`: the long Lite FP32 run's checkpoint at step 1000, the one both QAT runs
  started from ("the same checkpoint twice"), stored in bf16 after measuring the change on
  the first 204,800 bytes of the valid slice (the bytes training validated on; the whole slice
  would cost 4x the CPU time, which this session did not have);
- `tilelli-lite-ternary` (the default model): the QAT run with the lowest validated bpb, at its
  best step, as packed trits (since session 2: `qat-long-wd0`, 1.4123 vs 1.4865 for `qat-wd0.1`);
- `vanilla-fp32`: the long vanilla run at its best step, bf16 (checked the same way).

Each is a plain `tilelli export` command; old shipped directories of these names are replaced.

    python -m studies.base_models.ship --runs-dir ~/tl/runs --data ~/tl/data/tinystories [--only NAME] [--dry-run]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from studies.base_models.runs import QAT, QAT_STEPS
from tilelli.model.checkpoint_files import SHIPPED_DIR
from tilelli.train.runs import read_metrics

QAT_RUNS = ("qat-wd0.1", "qat-wd0", "qat-long-wd0", "qat-1250-wd0")
CHECK_BYTES = 204_800


def best_valid(run_dir: Path) -> float:
    _, valid = read_metrics(run_dir)
    return min(r["valid_bpb"] for r in valid)


def commands(runs: Path, data: Path) -> dict[str, list[str]]:
    done = [r for r in QAT_RUNS  # finished runs only
            if (runs / r / "checkpoints" / f"step-{QAT_STEPS.get(r, QAT['steps']):07d}").is_dir()]
    twin = min(done, key=lambda r: best_valid(runs / r)) if done else None
    head = data / f"valid-head{CHECK_BYTES}.bin"
    head.write_bytes((data / "valid.bin").read_bytes()[:CHECK_BYTES])
    valid = str(head)
    return {
        "tilelli-lite-fp32": ["--checkpoint", str(runs / "long-tilelli-lite-fp32" / "checkpoints" / "step-0001000"),
                              "--bf16", "--check-data", valid],
        "tilelli-lite-ternary": ["--checkpoint", str(runs / str(twin)), "--best", "--packed"],
        "vanilla-fp32": ["--checkpoint", str(runs / "long-vanilla-fp32"), "--best", "--bf16", "--check-data", valid],
    }


def export_all(exports: dict[str, list[str]], only: str = "", dry_run: bool = False) -> None:
    """Run `tilelli export ARGS --out checkpoints/NAME` for each NAME (or just `only`),
    replacing what was shipped under that name. The export goes to NAME.new first and replaces
    NAME only once it succeeded: a run fine-tuned from the shipped NAME itself (the chat models'
    stage 3) reads NAME while it is exported, and a failed export leaves what shipped."""
    exe = shutil.which("tilelli", path=str(Path(sys.executable).parent)) or "tilelli"
    for name, extra in exports.items():
        if only and only != name:
            continue
        out, new = SHIPPED_DIR / name, SHIPPED_DIR / f"{name}.new"
        cmd = [exe, "export", *extra, "--out", str(new), "--threads", "1"]
        print(" ".join(cmd), flush=True)
        if not dry_run:
            shutil.rmtree(new, ignore_errors=True)
            subprocess.run(cmd, check=True)
            shutil.rmtree(out, ignore_errors=True)
            new.rename(out)


def arguments(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs-dir", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the prepared data dir the runs trained on")
    ap.add_argument("--only", default="", help="export only this shipped name")
    ap.add_argument("--dry-run", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    exports = commands(args.runs_dir, args.data)
    if "None" in exports["tilelli-lite-ternary"][1] and args.only in ("", "tilelli-lite-ternary"):
        sys.exit("error: no QAT run has finished yet")
    export_all(exports, args.only, args.dry_run)


if __name__ == "__main__":
    main()
