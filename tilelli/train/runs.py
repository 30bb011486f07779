"""The files of a run directory, readable without torch (for `tilelli plot` and scripts)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tilelli.errors import TilelliError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d+)")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train lines, validation lines) of a run's metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise TilelliError(f"{run_dir} has no {METRICS_FILE}; is it a `tilelli train` run directory?")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in lines if "loss" in r], [r for r in lines if "valid_loss" in r]


def best_checkpoint(run_dir: str | Path) -> Path:
    """The kept checkpoint at the validated step with the lowest valid bpb: with little data a
    model overfits, so the step to ship is chosen on validation, not taken as the last one."""
    kept = {int(m.group(1)): p for p in list_checkpoints(run_dir) if (m := _STEP_DIR.fullmatch(p.name))}
    _, valid = read_metrics(run_dir)
    scored = [r for r in valid if r["step"] in kept]
    if not scored:
        raise TilelliError(f"{run_dir} has no kept checkpoint at a validated step; train with --eval-every "
                           "dividing --ckpt-every, or name a checkpoint directory instead")
    return kept[min(scored, key=lambda r: r["valid_bpb"])["step"]]
