"""The A/B of Lite vs vanilla and FP32 vs ternary, from the runs of studies/ab/runs.py.

Reads each run's metrics.jsonl and run.json (the copies under studies/ab/records/, or a live
runs dir with --runs) and writes studies/ab/results/ab.json and docs/results/ab.md:
  - the learning-rate / optimizer sweep of Lite FP32 and vanilla (same short protocol);
  - the seeds at each model's best sweep setting, and Welch's t-test of Lite minus vanilla
    with the difference's 95 % CI and Hedges' g;
  - the short parent-block runs next to Lite at the same setting;
  - the long runs: valid bpb at each validation, the step chosen, and the ternary gaps
    (from-scratch ternary and the quantization-aware twin, both against Lite FP32).
All valid bpb here are on the same first EVAL_BYTES of the valid slice that training validates
on; the shipped checkpoints' whole-slice numbers are in docs/results/quality.md.

    python -m studies.ab.analyse --runs runs/ab --collect --plots   # copy the run records, tabulate, draw
    python -m studies.ab.analyse                            # tabulate the committed copies
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studies.ab.runs import LITE, PARENT, SEEDS, SWEEP, VANILLA, parent_runs, sweep_name
from studies.common import add_output_args, publish, results_dir
from studies.records import copy_record, mean_sd, record, welch_sentence
from tilelli.train.runs import RUN_FILE
from tilelli.train.stats import welch

RESULTS = results_dir(__file__)
RUN_COPIES = Path(__file__).resolve().parent / "records"
MAINS = {"lite_fp32": f"main-{LITE}", "vanilla": f"main-{VANILLA}", "lite_ternary": "main-tilelli-lite-ternary",
         "lite_ternary_qat": "qat-tilelli-lite-ternary"}


def analyse(runs: Path) -> dict:
    def get(name: str) -> dict | None:
        return record(runs / name)

    out: dict = {"sweep": {}, "seeds": {}, "parents": {}, "mains": {}}
    best: dict[str, tuple[str, float]] = {}
    for model in (LITE, VANILLA):
        rows = {f"{opt} {lr:g}": get(sweep_name(model, opt, lr)) for opt, lr in SWEEP[model]}
        out["sweep"][model] = rows
        done = {k: r for k, r in rows.items() if r}
        if len(done) == len(rows):
            key = min(done, key=lambda k: done[k]["final_valid_bpb"])
            best[model] = (done[key]["optimizer"], done[key]["lr"])
            seeds = [get(sweep_name(model, *best[model], s)) for s in (0, *SEEDS)]
            out["seeds"][model] = {"setting": key, "runs": seeds}
    seed_values = {m: [r["final_valid_bpb"] for r in s["runs"] if r] for m, s in out["seeds"].items()}
    if all(len(seed_values.get(m, [])) == 1 + len(SEEDS) for m in (LITE, VANILLA)):
        out["welch_lite_minus_vanilla"] = welch(seed_values[LITE], seed_values[VANILLA]).to_dict()
    if LITE in best:
        out["parents"] = {r.model: get(r.name) for r in parent_runs(*best[LITE])}
    mains = {k: get(v) for k, v in MAINS.items()}
    out["mains"] = mains
    base = mains["lite_fp32"]
    for key in ("lite_ternary", "lite_ternary_qat"):
        if base and mains[key]:
            gap = mains[key]["best_valid_bpb"] / base["best_valid_bpb"] - 1
            out[f"gap_{key}_vs_lite_fp32"] = gap
    if base and mains["vanilla"]:
        out["main_lite_minus_vanilla"] = base["best_valid_bpb"] - mains["vanilla"]["best_valid_bpb"]
    return out


def _bpb(r: dict | None, key: str = "final_valid_bpb") -> str:
    return f"{r[key]:.4f}" if r else "not run"


def markdown(a: dict) -> str:
    lines = ["### Learning-rate and optimizer sweep (200 steps x 16 x 256 bytes, seed 0)", "",
             "| model | optimizer | lr | valid bpb | median tokens/s (1 thread) |", "|---|---|---:|---:|---:|"]
    for model, rows in a["sweep"].items():
        for setting, r in sorted(rows.items(), key=lambda kv: (kv[0].split()[0], float(kv[0].split()[1]))):
            opt, lr = setting.split()
            speed = f"{r['tokens_per_s']:,.0f}" if r else ""
            lines.append(f"| `{model}` | {opt} | {lr} | {_bpb(r)} | {speed} |")
    if a["seeds"]:
        lines += ["", "### Seeds at each model's best setting (valid bpb)", "",
                  "| model | setting | " + " | ".join(f"seed {s}" for s in (0, *SEEDS)) + " | mean ± sd |",
                  "|---|---|" + "---:|" * (len(SEEDS) + 2)]
        for m, s in a["seeds"].items():
            summary = mean_sd([r["final_valid_bpb"] for r in s["runs"] if r])
            lines.append(f"| `{m}` | {s['setting']} | " + " | ".join(_bpb(r) for r in s["runs"]) + f" | {summary} |")
    if "welch_lite_minus_vanilla" in a:
        w = a["welch_lite_minus_vanilla"]
        lines += ["", welch_sentence(w)]
    if a["parents"]:
        lines += ["", f"### Parent blocks next to Lite FP32, {PARENT['steps']} steps x 16 x 256 bytes at Lite's best "
                  "setting (valid bpb)", "",
                  "| model | valid bpb |", "|---|---:|"]
        lines += [f"| `{m}` | {_bpb(r)} |" for m, r in a["parents"].items()]
    if any(a["mains"].values()):
        lines += ["", "### Long runs (the best validated step is the one that ships)", "",
                  "| run | setting | steps | tokens | valid bpb by step | best step | best valid bpb |",
                  "|---|---|---:|---:|---|---:|---:|"]
        for r in a["mains"].values():
            if r:
                curve = ", ".join(f"{step}: {bpb:.3f}" for step, bpb in r["valid_curve"])
                start = f" (from `{r['init_from']}`)" if r["init_from"] else ""
                lines.append(f"| `{r['run']}`{start} | {r['optimizer']} {r['lr']:g} | {r['steps']} | "
                             f"{r['tokens'] / 1e6:.2f} M | {curve} | {r['best_step']} | {r['best_valid_bpb']:.4f} |")
    for key, label in (("gap_lite_ternary_vs_lite_fp32", "Lite ternary from scratch"),
                       ("gap_lite_ternary_qat_vs_lite_fp32", "Lite FP32 → ternary twin (QAT)")):
        if key in a:
            lines.append(f"\n**Ternary gap, {label} vs Lite FP32:** {a[key]:+.2%} valid bpb.")
    return "\n".join(lines) + "\n"


def collect(runs: Path) -> None:
    """Copy every finished run's run.json and metrics.jsonl (not its checkpoints) into RUN_COPIES."""
    for run in sorted(p for p in runs.iterdir() if (p / RUN_FILE).is_file() and record(p)):
        copy_record(run, RUN_COPIES / run.name)


def plots(a: dict, runs: Path, out: Path) -> list[Path]:
    """`tilelli plot` curves of every run, one picture per group (needs matplotlib)."""
    from tilelli.train.plot import plot_runs

    groups = {"sweep": [r for rows in a["sweep"].values() for r in rows.values() if r],
              "seeds": [r for s in a["seeds"].values() for r in s["runs"] if r],
              "parents": [r for r in a["parents"].values() if r],
              "main": [r for r in a["mains"].values() if r]}
    return [plot_runs([runs / r["run"] for r in rows], out / f"curves-{name}.png")
            for name, rows in groups.items() if rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=RUN_COPIES, help="run directories (default: the committed copies)")
    ap.add_argument("--collect", action="store_true", help=f"first copy the runs' records into {RUN_COPIES}")
    add_output_args(ap, RESULTS)
    ap.add_argument("--plots", action="store_true", help="also draw curves-{sweep,seeds,parents,main}.png")
    args = ap.parse_args()
    if args.collect:
        collect(args.runs)
    runs = RUN_COPIES if args.collect else args.runs
    result = analyse(runs)
    publish(args, "ab", result, markdown(result))
    print(markdown(result))
    if args.plots:
        print("\n".join(str(p) for p in plots(result, runs, args.docs)))


if __name__ == "__main__":
    main()
