"""Launch the chat fine-tuning runs (issue 23): plain `tilelli train` on the chat set.

The set is `tilelli prepare-chat --out DATA` (multi-turn conversations, a masked source: loss on
reply bytes only, every window starts at a turn). Every run starts from a shipped base
checkpoint (`--init-from`, fresh optimizer and schedule) and has the same protocol:

- 300 steps x batch 4 x 1,024 bytes = 1.23 M bytes (0.24 epoch of the 5.13 M-byte chat set),
  one thread per run.
- Muon at 1e-3 (half the pretraining peak: fine-tuning, not pretraining), 20 warm-up steps,
  cosine to 1e-4, weight decay 0.1; validation on the whole held-out valid.bin (400 held-out
  fact questions + 400 held-out story requests; reply bytes only) at steps 150 and 300.

Runs:
- `chat-lite-fp32`  from `checkpoints/tilelli-lite-fp32`;
- `chat-vanilla-fp32` from `checkpoints/vanilla-fp32` (the comparison);
- `chat-lite-ternary` from the shipped ternary twin `checkpoints/tilelli-lite-ternary`, with
  quantization on. Its packed trits load as latent weights trit x scale, which quantize back
  to exactly the same trits (absmean of trit x scale is scale x the nonzero fraction <= scale),
  so fine-tuning starts from the shipped twin itself. (The first chat twin started from the
  QAT run's latent weights; that run directory is gone, and the twin is what ships.)

Stage 2 (`--stage 2`, issue 23's "the model is too weak" finding): each run continues from its
stage-1 checkpoint for 900 more steps (0.72 epoch; 1.0 in all), Muon at 5e-4 with 20 warm-up
steps, cosine to 5e-5, seed 1 (another data order), validation at steps 450 and 900. On the
ternary run it took the chat valid bpb from 1.1437 to 1.1098 (82 min, one thread, beside other
work).

Stage 3 (`--stage 3`, session 14): the shipped chat models (session 10's stage-2 weights, fine-tuned
on a set whose identity questions leaked into small talk) continued for 300 steps on the rebuilt
set (`tilelli.chat.dataset.identity_turns`), Muon at 2.5e-4 with 20 warm-up steps, cosine to
2.5e-5, seed 2, validation at steps 150 and 300. Cheaper than retraining both stages (~13 min
per model on one idle thread of a 2-vCPU Intel Xeon, against ~50), and it starts from what ships.
Stage 4 (`--stage 4`, session 15) is stage 3 again from what shipped after it (the stage-3 weights),
with seed 3: another 0.24 epoch of the same set at the same rates.

    python -m studies.chat.runs --runs-dir ~/tl/runs/chat --data ~/tl/data/chat [--stage 2|3|4] [--only ternary]
    python -m studies.chat.runs --dry-run

The three models go side by side (one thread each); with `--stage 2` each model's stage 1 runs
first when it is unfinished. Rerunning resumes whatever is unfinished.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from studies.common import ROOT
from studies.launch import LITE, VANILLA, Run, final_valid_bpb, launch, launcher_parser

SFT = {"steps": 300, "warmup": 20, "batch_size": 4, "seq_len": 1024, "min_lr": 1e-4, "weight_decay": 0.1,
       "eval_every": 150, "eval_batches": 0, "ckpt_every": 50, "keep_last": 2}
SETTING = ("muon", 1e-3)
SFT2 = {**SFT, "steps": 900, "min_lr": 5e-5, "eval_every": 450}
SETTING2, SEED2 = ("muon", 5e-4), 1
SFT3 = {**SFT, "min_lr": 2.5e-5}
SETTING3 = ("muon", 2.5e-4)


def chat_run(name: str, model: str, source: Path) -> Run:
    return Run(name, model, *SETTING, protocol=tuple(SFT.items()), init_from=str(source),
               overrides=("max_seq_len=1024",))


def stage2(first: Run, runs_dir: Path) -> Run:
    """`first` continued (see the module doc) from its final checkpoint."""
    source = runs_dir / first.name / "checkpoints" / f"step-{first.steps:07d}"
    return Run(f"{first.name}-s2", first.model, *SETTING2, seed=SEED2, protocol=tuple(SFT2.items()),
               init_from=str(source), overrides=first.overrides)


def continuation(first: Run, shipped: Path, stage: int) -> Run:
    """The shipped chat model `first` made (checkpoints/tilelli-NAME), continued as stage 3 or 4
    (see the module doc; seed stage - 1: another data order each time)."""
    return Run(f"{first.name}-s{stage}", first.model, *SETTING3, seed=stage - 1, protocol=tuple(SFT3.items()),
               init_from=str(shipped / f"tilelli-{first.name}"), overrides=first.overrides)


def main() -> None:
    parser = launcher_parser(__doc__, "runs/chat", "data/chat", "`tilelli prepare-chat` output")
    parser.add_argument("--stage", type=int, choices=(1, 2, 3, 4), default=1,
                        help="2: also the continuation runs; 3 or 4: only the continuation of the shipped chat models")
    parser.add_argument("--only", choices=("lite", "vanilla", "ternary"), action="append",
                        help="run only this model (repeatable; default: all three)")
    args = parser.parse_args()
    shipped = ROOT / "checkpoints"
    runs = {"lite": chat_run("chat-lite-fp32", LITE, shipped / LITE),
            "vanilla": chat_run("chat-vanilla-fp32", VANILLA, shipped / VANILLA),
            "ternary": chat_run("chat-lite-ternary", "tilelli-lite-ternary", shipped / "tilelli-lite-ternary")}

    def go(run: Run) -> str:
        stages = {1: (run,), 2: (run, stage2(run, args.runs_dir))}.get(args.stage) or (
            continuation(run, shipped, args.stage),)
        for r in stages:
            line = launch(r, args.runs_dir, args.data, args.threads, args.dry_run)
            print(line, flush=True)
        return r.name

    runs = {key: run for key, run in runs.items() if key in (args.only or runs)}
    with ThreadPoolExecutor(len(runs)) as pool:
        names = list(pool.map(go, runs.values()))
    print(json.dumps({name: final_valid_bpb(args.runs_dir / name) for name in names}, indent=1))


if __name__ == "__main__":
    main()
