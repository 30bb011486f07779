"""Parameter counts and checkpoint sizes of every named config.

Builds each model (random init: sizes do not depend on training), saves it as an FP32
checkpoint and, for ternary configs, as a packed trit checkpoint, and records parameters,
file sizes and the measured bits per ternary weight. Writes
benchmarks/results/model_sizes.json and .md.

    python benchmarks/model_sizes.py
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from tilelli.model.checkpoint import read_config, save
from tilelli.model.config import from_name, list_configs
from tilelli.model.models import build_model

RESULTS = Path(__file__).parent / "results"


def measure(name: str) -> dict:
    """Sizes of one named config, measured from files really written."""
    torch.manual_seed(0)
    cfg = from_name(name)
    model = build_model(cfg)
    row = {"name": name, "params": model.num_params(), "ternary": cfg.ternary.quantize}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = save(model, Path(tmp) / "fp32")
        row["fp32_kb"] = round(read_config(fp32)["file_bytes"] / 1024)
        if cfg.ternary.quantize:
            meta = read_config(save(model, Path(tmp) / "packed", packed=True))
            row["packed_kb"] = round(meta["file_bytes"] / 1024)
            row["ternary_weights"] = meta["ternary_weights"]
            row["bits_per_weight"] = round(meta["bits_per_weight"], 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = [measure(n) for n in list_configs()]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "model_sizes", "machine": platform.platform(), "torch": torch.__version__, "rows": rows}
    (args.out / "model_sizes.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| model | params | FP32 checkpoint | packed checkpoint | bits / ternary weight |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        packed = f"{r['packed_kb']:,} KB" if r["ternary"] else "—"
        bits = f"{r['bits_per_weight']:.3f}" if r["ternary"] else "—"
        lines.append(f"| `{r['name']}` | {r['params']:,} | {r['fp32_kb']:,} KB | {packed} | {bits} |")
    (args.out / "model_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
