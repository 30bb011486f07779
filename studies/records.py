"""A training run's record, as the study tables read it: what one finished run contributes, and
the copy of its run.json and metrics.jsonl (not its checkpoints) that a study commits under its
`records/` folder, so that its tables can be recomputed without the run directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tilelli.train.runs import METRICS_FILE, RUN_FILE, read_metrics


def record(run_dir: Path) -> dict | None:
    """What one finished run contributes: setting, final and per-validation valid bpb, tokens."""
    if not (run_dir / METRICS_FILE).is_file():
        return None
    train, valid = read_metrics(run_dir)
    info = json.loads((run_dir / RUN_FILE).read_text())
    cfg = info["train"]
    if not valid or valid[-1]["step"] != cfg["steps"] or train[-1]["step"] != cfg["steps"]:
        return None  # unfinished
    best = min(valid, key=lambda r: r["valid_bpb"])
    speeds = sorted(r["tokens_per_s"] for r in train)
    return {"run": run_dir.name, "model": cfg["model"], "optimizer": cfg["optimizer"], "lr": cfg["lr"],
            "seed": cfg["seed"], "steps": cfg["steps"], "tokens": train[-1]["tokens"],
            "final_valid_bpb": valid[-1]["valid_bpb"], "best_step": best["step"], "best_valid_bpb": best["valid_bpb"],
            "valid_curve": [[r["step"], r["valid_bpb"]] for r in valid],
            "tokens_per_s": speeds[len(speeds) // 2],
            "eval_bytes": cfg["eval_batches"] * cfg["batch_size"] * cfg["seq_len"],
            "machine": info["machine"]["processor"], "git": info["git"]["commit"],
            "init_from": cfg.get("init_from") or None}


def copy_record(run: Path, dest: Path) -> None:
    """A run's run.json and metrics.jsonl, not its checkpoints: what a table is recomputed from."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (RUN_FILE, METRICS_FILE):
        shutil.copy2(run / name, dest / name)


def mean_sd(values: list[float]) -> str:
    """"mean ± sample sd" of a few seeds' bpb, or "" for fewer than two."""
    if len(values) < 2:
        return ""
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} ± {sd:.4f}"


def welch_sentence(w: dict, sizes: str = "") -> str:
    """The Welch's t-test line of an A/B page (`sizes`: what follows the seed counts, e.g. ", 4.10 M bytes each")."""
    return (f"**Welch's t-test, Lite minus vanilla** ({w['n_a']} vs {w['n_b']} seeds{sizes}): difference "
            f"{w['diff']:+.4f} bpb (95 % CI {w['diff_ci'][0]:+.4f} to {w['diff_ci'][1]:+.4f}), "
            f"t = {w['t']:.2f}, df = {w['df']:.1f}, p = {w['p']:.2g}; Hedges' g = {w['hedges_g']:.2f} "
            f"(95 % CI {w['hedges_g_ci'][0]:.2f} to {w['hedges_g_ci'][1]:.2f}). Negative = Lite lower (better).")
