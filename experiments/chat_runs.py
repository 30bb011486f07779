"""Launch the chat fine-tuning runs of issue 12: plain `tilelli train` on the chat set.

The set is `tilelli prepare-chat --out DATA` (a masked source: loss on reply bytes only, every
window starts at a turn). Every run starts from a shipped base checkpoint (`--init-from`, fresh
optimizer and schedule) and has the same protocol:

- 300 steps x batch 4 x 1,024 bytes = 1.23 M bytes (0.24 epoch of the 5.17 M-byte chat set;
  ~0.98 M reply bytes), one thread per run, two runs in parallel. Sized so that three runs
  finish inside one session next to the base-model QAT run.
- Muon at 1e-3 (half the pretraining peak: fine-tuning, not pretraining), 20 warm-up steps,
  cosine to 1e-4, weight decay 0.1; validation on the whole held-out valid.bin (400 held-out
  fact questions + 240 held-out story requests; reply bytes only) at steps 150 and 300.

Runs:
- `chat-lite-fp32`  from `checkpoints/tilelli-lite-fp32`;
- `chat-vanilla-fp32` from `checkpoints/vanilla-fp32` (the comparison);
- `chat-lite-ternary`: the ternary twin, fine-tuned with quantization on from the latent
  weights of the base QAT run `qat-long-wd0` (experiments/base_runs.py --qat qat-long-wd0), so the chat
  twin saw the same chat data and steps as its FP32 sibling.

    python experiments/chat_runs.py --runs-dir ~/tl/runs --data ~/tl/data/chat
    python experiments/chat_runs.py --dry-run

Lane 1 runs chat-lite-fp32 then chat-vanilla-fp32; lane 2 waits for qat-long-wd0 to finish,
then runs chat-lite-ternary. Rerunning resumes whatever is unfinished.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_runs import LITE, VANILLA, Run, final_valid_bpb, launch, launcher_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SFT = {"steps": 300, "warmup": 20, "batch_size": 4, "seq_len": 1024, "min_lr": 1e-4, "weight_decay": 0.1,
       "eval_every": 150, "eval_batches": 0, "ckpt_every": 50, "keep_last": 2}
SETTING = ("muon", 1e-3)
QAT_SOURCE = "qat-long-wd0"


def chat_run(name: str, model: str, source: Path) -> Run:
    return Run(name, model, *SETTING, protocol=tuple(SFT.items()), init_from=str(source),
               overrides=("max_seq_len=1024",))


def main() -> None:
    parser = launcher_parser(__doc__, "runs/chat", "data/chat", "`tilelli prepare-chat` output")
    args = parser.parse_args()
    qat_dir = args.runs_dir / QAT_SOURCE
    runs = {"lite": chat_run("chat-lite-fp32", LITE, ROOT / "checkpoints" / LITE),
            "vanilla": chat_run("chat-vanilla-fp32", VANILLA, ROOT / "checkpoints" / VANILLA),
            "ternary": chat_run("chat-lite-ternary", "tilelli-lite-ternary", qat_dir / "checkpoints" / "step-0000500")}

    def go(run: Run) -> str:
        line = launch(run, args.runs_dir, args.data, args.threads, args.dry_run)
        print(line, flush=True)
        return run.name

    def lane_ternary() -> list[str]:
        source = Path(runs["ternary"].init_from)
        while not args.dry_run and (final_valid_bpb(qat_dir) is None or not source.is_dir()):
            time.sleep(30)  # (a mid-run validation also makes the last valid step the last step)
        return [go(runs["ternary"])]

    with ThreadPoolExecutor(2) as pool:
        lanes = [pool.submit(lambda: [go(runs["lite"]), go(runs["vanilla"])]), pool.submit(lane_ternary)]
        names = [n for f in lanes for n in f.result()]
    print(json.dumps({name: final_valid_bpb(args.runs_dir / name) for name in names}, indent=1))


if __name__ == "__main__":
    main()
