"""Parameter counts and checkpoint sizes of every named config.

Builds each model (random init: sizes do not depend on training), saves it as an FP32
checkpoint and, for ternary configs, as a packed trit checkpoint, and records parameters,
file sizes and the measured bits per ternary weight. Writes
studies/model_sizes/results/model_sizes.json and docs/results/model_sizes.md.

    python -m studies.model_sizes.benchmark
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from studies.common import add_output_args, publish, results_dir
from tilelli.model.checkpoint import read_config, save
from tilelli.model.config import from_name, list_configs
from tilelli.model.models import build_model

RESULTS = results_dir(__file__)


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
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    rows = [measure(n) for n in list_configs()]
    result = {"benchmark": "model_sizes", "machine": platform.platform(), "torch": torch.__version__, "rows": rows}
    publish(args, "model_sizes", result, markdown(rows), indent=2)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params | FP32 checkpoint | packed checkpoint | bits / ternary weight |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        packed = f"{r['packed_kb']:,} KB" if r["ternary"] else "—"
        bits = f"{r['bits_per_weight']:.3f}" if r["ternary"] else "—"
        lines.append(f"| `{r['name']}` | {r['params']:,} | {r['fp32_kb']:,} KB | {packed} | {bits} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
