"""The base models' runs (studies/base_models/runs.py): the long pair, the QAT sweep and the seeded A/B.

Reads each run's metrics.jsonl and run.json (the copies under studies/base_models/records/, or
a live runs dir with --runs) and writes studies/base_models/results/base.json and
docs/results/base.md:
  - every run's valid bpb at each validation, in 1,024-byte windows on the first 204,800 bytes
    of the valid slice (what the trainer validates on);
  - the QAT sweep: each ternary twin's final valid bpb against its FP32 source;
  - the continuations of the shipped Lite FP32 (plain, with dropout, with the stories data):
    whether more epochs help once 3.5 MB is overfitted;
  - the seeded A/B: Lite FP32 vs vanilla, seeds 0-2 of the shipped long protocol (seed 0 is the
    shipped run), Welch's t-test of Lite minus vanilla with the difference's 95 % CI and Hedges' g.
The shipped checkpoints' whole-valid-slice numbers are in docs/results/quality.md.

    python -m studies.base_models.analyse --runs ~/tl/runs --collect   # copy records, tabulate
    python -m studies.base_models.analyse                                      # tabulate the committed copies
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studies.base_models.runs import (
    CONT_VARIANTS,
    QAT_STEPS,
    QAT_WEIGHT_DECAY,
    SEEDS,
    STORIES_VARIANTS,
    cont_run,
    long_run,
)
from studies.common import add_output_args, publish, results_dir
from studies.launch import LITE, VANILLA
from studies.records import copy_record, mean_sd, record, welch_sentence
from tilelli.train.runs import RUN_FILE, read_metrics
from tilelli.train.stats import welch

RESULTS = results_dir(__file__)
BASE_COPIES = Path(__file__).resolve().parent / "records"
SHIPPED_TWIN = "qat-1250-wd0"
QAT_RUNS = ("qat-wd0.1", "qat-wd0", "qat-long-wd0", SHIPPED_TWIN)  # in the order they were run
CONT_RUNS = {cont_run(LITE, v).name: v for v in CONT_VARIANTS}  # run name -> its variant
TRAIN_TAIL = 50  # steps over which a run's last train bpb is averaged


def seed_names(model: str) -> list[str]:
    return [long_run(model, seed).name for seed in (0, *SEEDS)]


def analyse(runs: Path) -> dict:
    longs = {m: [record(runs / name) for name in seed_names(m)] for m in (LITE, VANILLA)}
    source = longs[LITE][0]
    qat = {}
    for name in QAT_RUNS:
        r = record(runs / name)
        if r:
            r["weight_decay"] = json.loads((runs / name / RUN_FILE).read_text())["train"]["weight_decay"]
            r["gap_vs_lite_fp32"] = r["final_valid_bpb"] / source["final_valid_bpb"] - 1 if source else None
        qat[name] = r
    cont = {}
    for name in CONT_RUNS:
        r = record(runs / name)
        if r:
            info = json.loads((runs / name / RUN_FILE).read_text())
            tail = read_metrics(runs / name)[0][-TRAIN_TAIL:]
            r["train_bpb_tail"] = sum(t["bpb"] for t in tail) / len(tail)
            r["dropout"] = info["model"].get("dropout", 0.0)
            r["train_sha256"] = info["data"]["train_sha256"]
        cont[name] = r
    out: dict = {"qat": qat, "cont": cont, "seeds": longs}
    finals = {m: [r["final_valid_bpb"] for r in rows if r] for m, rows in longs.items()}
    if all(len(v) == 1 + len(SEEDS) for v in finals.values()):
        out["welch_lite_minus_vanilla"] = welch(finals[LITE], finals[VANILLA]).to_dict()
    return out


def _curve(r: dict) -> str:
    return ", ".join(f"{step}: {bpb:.4f}" for step, bpb in r["valid_curve"])


def markdown(a: dict) -> str:
    lines = ["Valid bpb on the first 204,800 bytes of the valid slice in 1,024-byte windows, as the runs "
             "validated (one CPU thread per run, two runs side by side):", "",
             "| run | bytes | valid bpb by step | final | vs Lite FP32 |", "|---|---:|---|---:|---:|"]
    for rows in a["seeds"].values():
        if r := rows[0]:
            lines.append(f"| `{r['run']}` ({r['optimizer']} {r['lr']:g}) | {r['tokens'] / 1e6:.2f} M | {_curve(r)} | "
                         f"{r['final_valid_bpb']:.4f} | |")
    for name, r in a["qat"].items():
        if r:
            start = "the shipped bf16 checkpoint" if name in QAT_STEPS else "its step 1000"
            what = (f"Lite FP32 ({start}) + {r['steps']:,} ternary steps, weight decay {r['weight_decay']:g}"
                    + (", **shipped twin**" if name == SHIPPED_TWIN else ""))
            gap = f"{r['gap_vs_lite_fp32']:+.1%}" if r["gap_vs_lite_fp32"] is not None else ""
            lines.append(f"| `{name}`: {what} | +{r['tokens'] / 1e6:.2f} M | {_curve(r)} | "
                         f"{r['final_valid_bpb']:.4f} | {gap} |")
    if any(a["cont"].values()):
        lines += ["", "**Continuations of the shipped Lite FP32** (+600 steps = +2.46 M bytes, Muon re-warmed to "
                  "1e-3, cosine to 1e-4; train bpb is the mean of the last "
                  f"{TRAIN_TAIL} steps, measured with dropout on where the run has it):", "",
                  "| run | train data | dropout | train bpb | valid bpb by step | final | vs shipped |",
                  "|---|---|---:|---:|---|---:|---:|"]
        start = a["seeds"][LITE][0]
        for name, r in a["cont"].items():
            if r:
                data = "TinyStories + stories" if CONT_RUNS[name] in STORIES_VARIANTS else "TinyStories"
                gap = f"{r['final_valid_bpb'] - start['final_valid_bpb']:+.4f}" if start else ""
                lines.append(f"| `{name}` | {data} | {r['dropout']:g} | {r['train_bpb_tail']:.3f} | {_curve(r)} | "
                             f"{r['final_valid_bpb']:.4f} | {gap} |")
    lines += ["", "**Seeded A/B at the long protocol** (1,000 steps x 4 x 1,024 bytes = 4.10 M bytes each, "
              "Muon 2e-3; seed 0 is the shipped run; final valid bpb):", "",
              "| model | " + " | ".join(f"seed {s}" for s in (0, *SEEDS)) + " | mean ± sd |",
              "|---|" + "---:|" * (len(SEEDS) + 2)]
    for model, rows in a["seeds"].items():
        cells = [f"{r['final_valid_bpb']:.4f}" if r else "not finished" for r in rows]
        summary = mean_sd([r["final_valid_bpb"] for r in rows if r])
        lines.append(f"| `{model}` | " + " | ".join(cells) + f" | {summary} |")
    if "welch_lite_minus_vanilla" in a:
        w = a["welch_lite_minus_vanilla"]
        lines += ["", welch_sentence(w, ", 4.10 M bytes each")]
    else:
        lines += ["", "Welch's test waits for all three seeds of both models: "
                  "`python -m studies.base_models.runs --seeds` runs (or resumes) the unfinished ones."]
    return "\n".join(lines) + "\n"


def collect(runs: Path) -> None:
    """Copy the run.json and metrics.jsonl (not the checkpoints) of every finished run this
    table reads into BASE_COPIES."""
    for name in (*seed_names(LITE), *seed_names(VANILLA), *QAT_WEIGHT_DECAY, *CONT_RUNS):
        if record(runs / name):
            copy_record(runs / name, BASE_COPIES / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=BASE_COPIES, help="run directories (default: the committed copies)")
    ap.add_argument("--collect", action="store_true", help=f"first copy the finished runs' records into {BASE_COPIES}")
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    if args.collect:
        collect(args.runs)
    result = analyse(BASE_COPIES if args.collect else args.runs)
    block = markdown(result)
    publish(args, "base", result, block)
    print(block)


if __name__ == "__main__":
    main()
