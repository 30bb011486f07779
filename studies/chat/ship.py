"""Export the chat runs of `studies/chat/runs.py` into checkpoints/: the chat models that ship (issue 23).

Each model's stage-3 run (`runs.py --stage 3`: the session-10 chat model continued on the rebuilt
set), final checkpoint: shipped in session 14 (records/session14/). (Sessions 10-13 shipped the
stage-2 runs' final checkpoints, records/session10/; session 8 the stage-1 runs'.)

- `tilelli-chat-lite-ternary` (the default of `tilelli chat` and `tilelli serve`): the ternary
  chat run's final checkpoint as packed trits;
- `tilelli-chat-lite-fp32` and `tilelli-chat-vanilla-fp32`: the FP32 chat runs' final checkpoints
  in bf16, after checking the change on the whole held-out chat valid set (reply bytes only).

    python -m studies.chat.ship --runs-dir ~/tl/runs/chat --data ~/tl/data/chat [--only NAME] [--dry-run]
"""

from __future__ import annotations

from pathlib import Path

from studies.base_models.ship import arguments, export_all
from studies.chat.runs import SFT3


def final(runs: Path, name: str) -> str:
    return str(runs / f"{name}-s3" / "checkpoints" / f"step-{SFT3['steps']:07d}")


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
