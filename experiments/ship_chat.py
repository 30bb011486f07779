"""Export the chat runs of `chat_runs.py` into checkpoints/: the chat models that ship (issue 12).

- `tilelli-chat-lite-ternary` (the default of `tilelli chat` and `tilelli serve`): the ternary
  chat run's final checkpoint as packed trits;
- `tilelli-chat-lite-fp32` and `tilelli-chat-vanilla-fp32`: the FP32 chat runs' final checkpoints
  in bf16, after checking the change on the whole held-out chat valid set (reply bytes only).

    python experiments/ship_chat.py --runs-dir ~/tl/runs --data ~/tl/data/chat [--only NAME] [--dry-run]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chat_runs import SFT  # noqa: E402
from ship_base import arguments, export_all  # noqa: E402


def final(runs: Path, name: str) -> str:
    return str(runs / name / "checkpoints" / f"step-{SFT['steps']:07d}")


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
