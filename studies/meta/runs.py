"""Launch the router-entropy ("metacognition") runs of issue 13: plain `tilelli train` commands.

The original system trained an auxiliary loss on router entropy and hoped routing would become
a signal of not knowing. Ours is `router_entropy_weight` (tilelli/model/config.py): the weight
times the mean per-token router entropy, minimised on in-domain training text. Each run
continues the shipped Lite FP32 with the same protocol, differing only in the weight, so that
weight 0 is the control for what the fine-tuning alone does:

- 100 steps x batch 4 x 1,024 bytes = 410 K bytes of TinyStories train, Muon 1e-3, 10 warm-up
  steps, cosine to 1e-4, weight decay 0.1, seed 0; validation on the first 204,800 bytes of
  valid (50 windows) at the end. One thread, one lane: ~50 min in all on this machine.
- weights 0 (control), 0.1 and 1.0 (the CE it competes with is ~0.97 nats/byte).

Then `studies/probe/benchmark.py --checkpoint RUN/checkpoints/step-0000100 ...` measures whether router
entropy became a better out-of-domain signal, and the valid bpb says what it cost.

    python -m studies.meta.runs --runs-dir ~/tl/runs --data ~/tl/data/tinystories
    python -m studies.meta.runs --dry-run
    python -m studies.meta.runs --weight 0.1 ...   # one run only
"""

from __future__ import annotations

import json

from studies.launch import LITE, Run, final_valid_bpb, launch, launcher_parser
from tilelli.model.checkpoint_files import SHIPPED_DIR

PROTOCOL = {"steps": 100, "warmup": 10, "batch_size": 4, "seq_len": 1024, "min_lr": 1e-4, "weight_decay": 0.1,
            "eval_every": 100, "eval_batches": 50, "ckpt_every": 50, "keep_last": 2}
WEIGHTS = (0.0, 0.1, 1.0)


def meta_run(weight: float) -> Run:
    return Run(f"meta-{LITE}-w{weight:g}", LITE, "muon", 1e-3, protocol=tuple(PROTOCOL.items()),
               init_from=str(SHIPPED_DIR / LITE),
               overrides=("max_seq_len=1024", f"router_entropy_weight={weight:g}"))


def main() -> None:
    parser = launcher_parser(__doc__, "runs/meta")
    parser.add_argument("--weight", type=float, choices=WEIGHTS,
                        help="run only the run of this weight (e.g. one per CPU lane)")
    args = parser.parse_args()
    runs = [meta_run(w) for w in WEIGHTS if args.weight is None or w == args.weight]
    for run in runs:
        print(launch(run, args.runs_dir, args.data, args.threads, args.dry_run), flush=True)
    print(json.dumps({r.name: final_valid_bpb(args.runs_dir / r.name) for r in runs}, indent=1))


if __name__ == "__main__":
    main()
