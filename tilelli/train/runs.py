"""The files of a run directory, readable without torch (for `tilelli plot` and scripts). Where
a run keeps its checkpoints is the model layer's to know (`tilelli.model.checkpoint_files`): a
checkpoint path may name a run directory anywhere a checkpoint is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tilelli.errors import TilelliError
from tilelli.model.checkpoint_files import STEP_DIR, list_checkpoints

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


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
    kept = {int(m.group(1)): p for p in list_checkpoints(run_dir) if (m := STEP_DIR.fullmatch(p.name))}
    _, valid = read_metrics(run_dir)
    scored = [r for r in valid if r["step"] in kept]
    if not scored:
        raise TilelliError(f"{run_dir} has no kept checkpoint at a validated step; train with --eval-every "
                           "dividing --ckpt-every, or name a checkpoint directory instead")
    return kept[min(scored, key=lambda r: r["valid_bpb"])["step"]]
