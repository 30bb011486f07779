"""Does the model know when it does not know? The uncertainty probe, shipped checkpoints side by side.

For every checkpoint (default: the shipped base models, then the shipped chat models that
exist; a missing one is skipped with a note), on the sets of `tilelli.probe.sets` (built from
../shared/data into studies/probe/results/probe-sets/ with their meta.json, git-ignored):
- AUROC in-domain vs OOD of every raw signal (max-softmax, predictive entropy, prompt bits per
  byte, router entropy per layer and averaged, abstain probability), all regimes pooled and per
  regime, with bootstrap 95 % intervals; the prompt length as a control;
- the trained detector (logistic regression over the mean-pooled final hidden state plus the
  signals, fitted on the training split only) on the 210 probe prompts, and leave-one-regime-out;
- N1: router entropy vs max-softmax per regime, per routed model;
- N3: the detector fitted on one model applied to another of the same width and prompt format
  (its standardisation and the threshold chosen on the source: 5 % false positives there);
- the chat models' abstain decision.
Writes studies/probe/results/probe.json, docs/results/probe.md and docs/results/probe-roc.png
(ROC curves, all regimes pooled).

    python -m studies.probe.benchmark                          # the shipped checkpoints
    python -m studies.probe.benchmark CKPT_DIR [CKPT_DIR ...]  # others (a run dir: its newest checkpoint)
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would fight the engine and torch

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from studies.common import SHARED, add_output_args, publish, results_dir, shown  # noqa: E402
from tilelli.model.checkpoint_files import (  # noqa: E402
    CHAT_PREFIX,
    SHIPPED_DIR,
    checkpoint_dir,
    is_chat_checkpoint,
    read_config,
)
from tilelli.probe import checkpoint_label  # noqa: E402
from tilelli.probe.metrics import roc_curve  # noqa: E402
from tilelli.probe.report import LABELS, MAIN, REGIME_LABELS, evaluate, fmt, markdown, rows_of, transfer  # noqa: E402
from tilelli.probe.sets import build_sets, read_set  # noqa: E402
from tilelli.probe.signals import measure, orientation  # noqa: E402
from tilelli.train.trainer import cpu_name  # noqa: E402

RESULTS = results_dir(__file__)
SHIPPED = ("tilelli-lite-fp32", "tilelli-lite-ternary", "vanilla-fp32", f"{CHAT_PREFIX}lite-fp32",
           f"{CHAT_PREFIX}lite-ternary", f"{CHAT_PREFIX}vanilla-fp32")
N3_DETECTORS = (MAIN, "signals")
ROC_SIGNALS = ("max_softmax", "entropy", "prompt_bpb", "router_entropy", "abstain_probability")
# what the original system reported (issue 13), next to which our numbers are printed
ORIGINAL = {"max_softmax_all": 0.54, "max_softmax_gibberish": 0.93, "router_wins": "0 of 7",
            "best_trained": 0.85, "transplant": "0.76 -> 0.54, 27 % false positives"}


def measure_model(ckpt: Path, sets: Path, limit: int, threads: int) -> tuple[dict, tuple]:
    """(result row, (probe, train) measurements) of one checkpoint."""
    cfg = read_config(ckpt)
    chat = is_chat_checkpoint(ckpt)
    t0 = time.time()
    probe = measure(ckpt, read_set(sets / "probe.jsonl", limit), chat, threads)
    train = measure(ckpt, read_set(sets / "train.jsonl", limit), chat, threads)
    row = {"name": checkpoint_label(ckpt), "checkpoint": shown(ckpt), "arch": cfg["model"]["arch"],
           "d_model": cfg["model"]["d_model"], "weights": "packed trits" if cfg["packed"] else cfg["weights_dtype"],
           "ternary": bool(cfg["model"]["ternary"]["quantize"]), "template": "chat" if chat else "plain",
           "step": cfg.get("step"), **evaluate(probe, train)}
    row["seconds"] = round(time.time() - t0, 1)
    return row, (probe, train)


def n3_pairs(rows: list[dict], measured: list[tuple]) -> list[dict]:
    """Every ordered pair of models with the same width and prompt format, for the detector and
    for the signals-only detector (whose inputs mean the same thing in every model)."""
    out = []
    for i, (a, (a_probe, a_train)) in enumerate(zip(rows, measured, strict=True)):
        for j, (b, (b_probe, _)) in enumerate(zip(rows, measured, strict=True)):
            if i != j and a["d_model"] == b["d_model"] and a["template"] == b["template"]:
                out += [{"trained_on": a["name"], "applied_to": b["name"], **transfer(a_train, a_probe, b_probe, kind)}
                        for kind in N3_DETECTORS]
    return out


def markdown_all(result: dict) -> str:
    models = result["models"]
    names = [m["name"] for m in models]
    lines = [f"{len(models[0]['prompts'])} probe prompts (7 regimes), detector trained on the disjoint training "
             f"split; AUROC in-domain vs all OOD regimes pooled, 95 % bootstrap interval; every signal oriented "
             f"so that higher = OOD. {result['machine']}.", "",
             "| signal | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---:|" * len(names)]
    seen: list[str] = []
    for m in models:
        seen += [n for n, _ in rows_of(m) if n not in seen]
    for n in seen:
        cells = []
        for m in models:
            table = dict(rows_of(m)).get(n)
            cells.append(fmt(table["all"]) if table else "—")
        lines.append(f"| {LABELS.get(n, n)} | " + " | ".join(cells) + " |")
    regimes = list(models[0]["leave_one_regime_out"])
    lines += ["", "Detector, leave-one-regime-out (trained without that regime, tested on in-domain vs it):", "",
              "| model | " + " | ".join(REGIME_LABELS[r] for r in regimes) + " |", "|---|" + "---:|" * len(regimes)]
    for m in models:
        lines.append(f"| `{m['name']}` | " + " | ".join(fmt(m["leave_one_regime_out"][r]) for r in regimes) + " |")
    routed = [m for m in models if "n1" in m]
    if routed:
        lines += ["", "N1, router entropy vs max-softmax (AUROC per regime; * = paired 95 % interval of the "
                  "difference excludes 0):", "",
                  "| model | " + " | ".join(REGIME_LABELS[r] for r in regimes) + " | router higher in |",
                  "|---|" + "---:|" * len(regimes) + "---:|"]
        for m in routed:
            n1 = m["n1"]
            cells = [f"{c['router_entropy']:.2f} vs {c['max_softmax']:.2f}{'*' if c['significant'] else ''}"
                     for c in (n1["regimes"][r] for r in regimes)]
            lines.append(f"| `{m['name']}` | " + " | ".join(cells)
                         + f" | {n1['router_wins']} of {n1['of']} ({n1['router_wins_significant']} significant) |")
    if result["n3"]:
        lines += ["", "N3, the detector moved to another model of the same width (standardisation and threshold "
                  "from the source; threshold = 5 % false positives on the source's training split, out-of-fold):",
                  "", "| trained on | applied to | detector | AUROC on source | AUROC on target | FPR source → target "
                  "| TPR source → target |", "|---|---|---|---:|---:|---:|---:|"]
        for t in result["n3"]:
            s, d = t["source"], t["target"]
            lines.append(f"| `{t['trained_on']}` | `{t['applied_to']}` | {t['detector']} | {fmt(s)} | {fmt(d)} | "
                         f"{100 * s['fpr']:.0f} % → {100 * d['fpr']:.0f} % | {100 * s['tpr']:.0f} % → "
                         f"{100 * d['tpr']:.0f} % |")
    lines += ["", *claims(result), "", "Per model and regime:", ""]
    lines += [markdown(m["name"], m) for m in models]
    return "\n".join(lines) + "\n"


def claims(result: dict) -> list[str]:
    """The original system's numbers next to ours, per model (the verdicts are in docs/probe.md)."""
    o = result["original"]
    lines = ["The original system's claims, re-measured here:", "",
             "| claim | original | " + " | ".join(f"`{m['name']}`" for m in result["models"]) + " |",
             "|---|---|" + "---:|" * len(result["models"])]

    def row(what: str, orig: object, cell) -> None:
        lines.append(f"| {what} | {orig} | " + " | ".join(cell(m) for m in result["models"]) + " |")
    row("max-softmax AUROC, all regimes", o["max_softmax_all"],
        lambda m: fmt(m["signals"]["max_softmax"]["auroc"]["all"]))
    row("max-softmax AUROC, gibberish only", o["max_softmax_gibberish"],
        lambda m: fmt(m["signals"]["max_softmax"]["auroc"]["gibberish"]))
    row("N1: router entropy beats max-softmax in", o["router_wins"],
        lambda m: f"{m['n1']['router_wins']} of {m['n1']['of']} regimes" if "n1" in m else "— (no router)")
    row("best trained signal, all regimes", o["best_trained"],
        lambda m: fmt(m["detectors"][MAIN]["auroc"]["all"]))

    def moved(m: dict) -> str:
        cells = [f"from `{t['trained_on']}`: {t['source']['auroc']:.2f} → {t['target']['auroc']:.2f}, "
                 f"{100 * t['source']['fpr']:.0f} → {100 * t['target']['fpr']:.0f} % FP"
                 for t in result["n3"] if t["applied_to"] == m["name"] and t["detector"] == MAIN]
        return "; ".join(cells) or "—"
    row("N3: detector (hidden + signals) moved onto this model", o["transplant"], moved)
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = result["models"]
    cols = min(3, len(models))
    rows = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax, m in zip(axes.flat, models, strict=False):
        prompts = m["prompts"]
        ood = np.array([p["regime"] != "in_domain" for p in prompts])
        for name in (*ROC_SIGNALS, "detector"):
            if name not in prompts[0]:
                continue
            s = np.array([p[name] for p in prompts]) * (1.0 if name == "detector" else orientation(name))
            fpr, tpr = roc_curve(s[ood], s[~ood])
            cell = m["detectors"][MAIN]["auroc"]["all"] if name == "detector" else m["signals"][name]["auroc"]["all"]
            ax.plot(fpr, tpr, lw=2.2 if name == "detector" else 1.2,
                    label=f"{'detector' if name == 'detector' else LABELS[name]} ({cell['auroc']:.2f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set(title=m["name"], xlabel="false-positive rate (in-domain flagged)", ylabel="true-positive rate")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle("ROC, in-domain vs all OOD regimes (probe set)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(checkpoints: list[Path], out: Path, limit: int, threads: int) -> dict:
    meta = build_sets(SHARED, out / "probe-sets")
    rows, measured = [], []
    for ckpt in checkpoints:
        row, m = measure_model(ckpt, out / "probe-sets", limit, threads)
        print(f"{row['name']}: {row['seconds']} s", file=sys.stderr)
        rows.append(row)
        measured.append(m)
    return {"machine": f"{cpu_name()}, {threads} thread(s)", "limit": limit,
            "sets": {"sha256": meta["sha256"], "counts": meta["counts"]}, "models": rows,
            "n3": n3_pairs(rows, measured), "original": ORIGINAL}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint directories (default: the shipped ones)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    add_output_args(ap, RESULTS)
    ap.add_argument("--limit", type=int, default=0,
                    help="only N prompts of each regime (N >= 5): a quick look, never for publishing")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"error: {SHARED} is missing; this benchmark needs ../shared/data")
    torch.set_num_threads(args.threads)
    checkpoints = []
    for path in args.checkpoints or [SHIPPED_DIR / n for n in SHIPPED]:
        if not path.exists():
            print(f"note: {shown(path)} is not there; skipped", file=sys.stderr)
            continue
        checkpoints.append(checkpoint_dir(path))
    if not checkpoints:
        sys.exit("error: none of the checkpoints exists")
    result = run(checkpoints, args.out, args.limit, args.threads)  # the prompt sets go under --out
    block = markdown_all(result)
    publish(args, "probe", result, block, ensure_ascii=False)
    plot(result, args.docs / "probe-roc.png")
    print(block)


if __name__ == "__main__":
    main()
