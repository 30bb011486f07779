"""Training curves: train and valid bits per byte against tokens seen, one colour per run.

Tokens (not steps) on the x axis, so runs with different batch sizes or numbers of GPUs line
up. matplotlib is an optional dependency, imported only here and only when plotting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tilelli.errors import TilelliError
from tilelli.train.runs import RUN_FILE, read_metrics


def run_label(run_dir: Path) -> str:
    """"dirname (model)", the model taken from run.json when there is one."""
    info = run_dir / RUN_FILE
    model = json.loads(info.read_text()).get("train", {}).get("model") if info.is_file() else None
    return f"{run_dir.name} ({model})" if model else run_dir.name


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing running mean: per-step losses are too noisy to compare runs by eye."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Overlay every run's train bpb (thin raw line, thick smoothed line) and valid bpb
    (dashed, with markers) into one PNG at `out`. The runs are read before matplotlib is
    imported, so that a wrong RUN_DIR is reported at once."""
    if not run_dirs:
        raise TilelliError("no RUN_DIR given")
    runs = [(Path(d), *read_metrics(d)) for d in run_dirs]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TilelliError("plotting needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run_dir, train, valid) in enumerate(runs):
        color, label = colors[i % len(colors)], run_label(run_dir)
        if train:
            tokens, bpb = [r["tokens"] for r in train], [r["bpb"] for r in train]
            ax.plot(tokens, bpb, color=color, alpha=0.2, linewidth=0.7)
            ax.plot(tokens, smooth(bpb, max(1, len(bpb) // 50)), color=color, linewidth=1.6,
                    label=f"{label} train")
        if valid:
            ax.plot([r["tokens"] for r in valid], [r["valid_bpb"] for r in valid], color=color,
                    linestyle="--", marker="o", markersize=4, label=f"{label} valid")
    ax.set_xlabel("tokens (bytes) seen")
    ax.set_ylabel("bits per byte")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("tilelli training curves")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
