"""Export the chat runs of `studies/chat/runs.py` into checkpoints/: the chat models that ship (issue 23).

Each model's stage-2 run (`runs.py --stage 2`), final checkpoint: shipped in session 10
(records/session10/). (Those of session 8 were the stage-1 runs' final checkpoints, step 300.)

- `tilelli-chat-lite-ternary` (the default of `tilelli chat` and `tilelli serve`): the ternary
  chat run's final checkpoint as packed trits;
- `tilelli-chat-lite-fp32` and `tilelli-chat-vanilla-fp32`: the FP32 chat runs' final checkpoints
  in bf16, after checking the change on the whole held-out chat valid set (reply bytes only).

    python -m studies.chat.ship --runs-dir ~/tl/runs/chat --data ~/tl/data/chat [--only NAME] [--dry-run]
"""

from __future__ import annotations

from pathlib import Path

from studies.base_models.ship import arguments, export_all
from studies.chat.runs import SFT2


def final(runs: Path, name: str) -> str:
    return str(runs / f"{name}-s2" / "checkpoints" / f"step-{SFT2['steps']:07d}")


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    valid = str(args.data / "valid.bin")
    export_all({
        "tilelli-chat-lite-ternary": ["--checkpoint", final(args.runs_dir, "chat-lite-ternary"), "--packed"],
        "tilelli-chat-lite-fp32": ["--checkpoint", final(args.runs_dir, "chat-lite-fp32"), "--bf16",
                                   "--check-data", valid],
        "tilelli-chat-vanilla-fp32": ["--checkpoint", final(args.runs_dir, "chat-vanilla-fp32"), "--bf16",
                                      "--check-data", valid],
    }, args.only, args.dry_run)


if __name__ == "__main__":
    main()
