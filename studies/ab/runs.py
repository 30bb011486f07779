"""Launch the training runs of the first A/B (docs/results/ab.md): plain `tilelli train` commands.

The A/B needs ~20 runs with matched bytes, tokens and settings, resumed across sessions and
spread over CPU lanes (studies/launch.py); this file is the record of which commands they were.

Phases, in the order they depend on each other:
  sweep   short runs, Lite FP32 and vanilla: AdamW at three learning rates, and Muon
  seeds   two more seeds of each model's best sweep setting (seed 0 is the sweep run itself)
  parent  short runs of tilelli-fp32 and tilelli-ternary at Lite's best setting, and Lite FP32
          under the same protocol as their reference
  main    the long runs that ship: Lite FP32, vanilla, Lite ternary from scratch
  qat     Lite FP32's best checkpoint continued with ternary quantization on (the "same
          checkpoint twice": one architecture shipped as FP32 and as ternary)

    python -m studies.ab.runs --phase sweep --lanes 2      # runs what is not done yet
    python -m studies.ab.runs --phase sweep --dry-run      # prints the commands
    python -m studies.ab.runs --phase rest --lanes 2       # main, qat, seeds, parent in one queue
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from studies.launch import LITE, VANILLA, Run, final_valid_bpb, launch, launcher_parser
from tilelli.train.runs import best_checkpoint

PARENTS = ("tilelli-fp32", "tilelli-ternary")
SHORT = {"steps": 200, "warmup": 20, "eval_every": 200, "eval_batches": 50, "ckpt_every": 100}
# The long runs are sized so that the whole queue (--phase rest) finishes inside one 180-minute
# session on 2 CPU cores: run directories do not outlive a session here, so a queue that needs
# two sessions never finishes. 400 steps = 1.64 M bytes = 0.47 epoch of the train slices.
MAIN = {"steps": 400, "warmup": 40, "eval_every": 100, "eval_batches": 50, "ckpt_every": 100, "keep_last": 10}
QAT = {"steps": 200, "warmup": 20, "eval_every": 100, "eval_batches": 50, "ckpt_every": 100, "keep_last": 10}
PARENT = {"steps": 100, "warmup": 10, "eval_every": 100, "eval_batches": 50, "ckpt_every": 100}
# AdamW at 1e-3, 2e-3, 4e-3 and Muon at 2e-3 for both models; then one more AdamW point past
# the end of the grid where each model's best lay (Lite's at 4e-3, vanilla's at 1e-3): the same
# number of runs for both.
SWEEP_BASE = [("adamw", 1e-3), ("adamw", 2e-3), ("adamw", 4e-3), ("muon", 2e-3)]
SWEEP = {"tilelli-lite-fp32": [*SWEEP_BASE, ("adamw", 8e-3)], "vanilla-fp32": [*SWEEP_BASE, ("adamw", 5e-4)]}
SEEDS = (1, 2)


def sweep_name(model: str, optimizer: str, lr: float, seed: int = 0) -> str:
    return f"{model}-{optimizer}-{lr:g}-s{seed}"


def parent_runs(optimizer: str, lr: float) -> list[Run]:
    """The parent blocks' short runs, and Lite FP32 under the same protocol as their reference."""
    protocol = tuple(PARENT.items())
    lite = Run(f"{sweep_name(LITE, optimizer, lr)}-{PARENT['steps']}steps", LITE, optimizer, lr, protocol=protocol)
    return [lite, *(Run(sweep_name(m, optimizer, lr), m, optimizer, lr, protocol=protocol) for m in PARENTS)]


def best_setting(runs_dir: Path, model: str) -> tuple[str, float]:
    """The (optimizer, lr) of `model`'s sweep run with the lowest final valid bpb."""
    scored = [(final_valid_bpb(runs_dir / sweep_name(model, opt, lr)), opt, lr) for opt, lr in SWEEP[model]]
    done = [s for s in scored if s[0] is not None]
    if len(done) < len(scored):
        sys.exit(f"error: the sweep of {model} is not finished ({len(done)}/{len(scored)}); run --phase sweep first")
    _, opt, lr = min(done)
    return opt, lr


def plan(phase: str, runs_dir: Path) -> list[Run]:
    if phase == "sweep":
        return [Run(sweep_name(m, opt, lr), m, opt, lr, protocol=tuple(SHORT.items())) for i in range(len(SWEEP[LITE]))
                for m in (LITE, VANILLA) for opt, lr in [SWEEP[m][i]]]
    if phase == "seeds":
        return [Run(sweep_name(m, *best_setting(runs_dir, m), seed), m, *best_setting(runs_dir, m), seed,
                    protocol=tuple(SHORT.items()))
                for seed in SEEDS for m in (LITE, VANILLA)]
    if phase == "parent":
        return parent_runs(*best_setting(runs_dir, LITE))
    if phase == "main":
        lite, vanilla = best_setting(runs_dir, LITE), best_setting(runs_dir, VANILLA)
        main = tuple(MAIN.items())
        return [Run(f"main-{LITE}", LITE, *lite, protocol=main),
                Run(f"main-{VANILLA}", VANILLA, *vanilla, protocol=main),
                Run("main-tilelli-lite-ternary", "tilelli-lite-ternary", *lite, protocol=main)]
    if phase == "qat":
        if final_valid_bpb(runs_dir / f"main-{LITE}") is None:
            sys.exit(f"error: main-{LITE} is not finished; run --phase main first")
        source = best_checkpoint(runs_dir / f"main-{LITE}")
        return [Run("qat-tilelli-lite-ternary", "tilelli-lite-ternary", *best_setting(runs_dir, LITE),
                    protocol=tuple(QAT.items()), init_from=str(source))]
    sys.exit(f"error: unknown phase {phase!r}")


def jobs(phase: str, runs_dir: Path, wait: bool = True) -> list[Callable[[], list[Run]]]:
    """What to run, as thunks a lane calls when it gets to them. Phase "rest" is everything after
    the sweep in one queue, ordered for two lanes: the long runs first, then the QAT twin (its
    thunk waits until Lite FP32's long run has finished, or without `wait` is empty until then),
    the seeds and the parent runs."""
    if phase != "rest":
        return [lambda r=r: [r] for r in plan(phase, runs_dir)]

    def qat_when_ready() -> list[Run]:
        while final_valid_bpb(runs_dir / f"main-{LITE}") is None:
            if not wait:
                return []
            time.sleep(30)
        return plan("qat", runs_dir)

    later = [lambda r=r: [r] for p in ("seeds", "parent") for r in plan(p, runs_dir)]
    return [*(lambda r=r: [r] for r in plan("main", runs_dir)), qat_when_ready, *later]


def main() -> None:
    parser = launcher_parser(__doc__, "runs/ab")
    parser.add_argument("--phase", required=True, choices=("sweep", "seeds", "parent", "main", "qat", "rest"))
    parser.add_argument("--lanes", type=int, default=2, help="runs at a time")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this")
    args = parser.parse_args()
    def lane(job: Callable[[], list[Run]]) -> list[str]:
        names = []
        for run in (r for r in job() if args.only in r.name):
            print(launch(run, args.runs_dir, args.data, args.threads, args.dry_run), flush=True)
            names.append(run.name)
        return names

    with ThreadPoolExecutor(args.lanes) as pool:
        names = [n for batch in pool.map(lane, jobs(args.phase, args.runs_dir, not args.dry_run)) for n in batch]
    print(json.dumps({name: final_valid_bpb(args.runs_dir / name) for name in names}, indent=1))


if __name__ == "__main__":
    main()
