"""`tilelli models`: the named configs with their real parameter counts.

The counts are the models' own (`tilelli.model.models.count_params`: each config built on the meta
device), so they cannot disagree with what `tilelli train` builds.
"""

from __future__ import annotations

import argparse

from tilelli.model.config import from_name, list_configs
from tilelli.model.models import count_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object per config instead of a table")


def model_rows() -> list[dict]:
    """One row per named config; `params` is what `build_model(cfg).num_params()` gives."""
    rows = []
    for name in list_configs():
        cfg = from_name(name)
        rows.append({
            "name": name,
            "params": count_params(cfg),
            "arch": cfg.arch,
            "d_model": cfg.d_model,
            "layers": cfg.n_layers,
            "pathways": ",".join(cfg.pathways) or "attn,mlp",
            "weights": "ternary" if cfg.ternary.quantize else "fp32",
        })
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_rows()
    if args.json:
        import json
        for r in rows:
            print(json.dumps(r))
        return 0
    cols = ["name", "params", "arch", "d_model", "layers", "pathways", "weights"]
    cells = [[f"{r['params'] / 1e6:.2f}M" if c == "params" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)))
    return 0
