"""The files of a run directory, readable without torch (for `tilelli plot` and scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tilelli.errors import TilelliError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train lines, validation lines) of a run's metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise TilelliError(f"{run_dir} has no {METRICS_FILE}; is it a `tilelli train` run directory?")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in lines if "loss" in r], [r for r in lines if "valid_loss" in r]
