"""The uncertainty probe (issue 13): does the model know when it does not know?

`sets` builds the prompt sets (7 regimes, a 210-prompt probe set and a disjoint training split),
`signals` measures a checkpoint's raw uncertainty signals and hidden states on them, `metrics`
holds AUROC and its bootstrap intervals, `detector` the trained logistic-regression detector,
and `report` turns measurements into the published numbers. `tilelli probe` runs it for one
checkpoint, `studies/probe/benchmark.py` for the shipped ones side by side; see docs/probe.md.
"""

from __future__ import annotations

import os
from pathlib import Path


def checkpoint_label(path: str | os.PathLike) -> str:
    """A checkpoint's name for tables: its directory, or run/step-N for a training run's checkpoint."""
    path = Path(path).resolve()
    return f"{path.parents[1].name}/{path.name}" if path.name.startswith("step-") else path.name
