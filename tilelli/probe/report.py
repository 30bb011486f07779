"""From one model's measured prompts to the probe's numbers, and those numbers as Markdown.

`evaluate(probe, train)` gives, for the 210 probe prompts:
- the AUROC (with a bootstrap 95 % interval) of every raw signal, in-domain vs all six OOD
  regimes pooled ("all") and vs each regime alone, each signal oriented so that higher = OOD;
- the same for the prompt's length (a control: it is no uncertainty signal, and where it
  separates well the sets, not the model, would be doing the work), as max(AUROC, 1 - AUROC),
  what the better of "longer = OOD" and "shorter = OOD" would reach;
- three trained detectors (`tilelli.probe.detector`), fitted on the *training* split only:
  hidden state + signals (the detector), signals only, hidden state only;
- leave-one-regime-out: the detector fitted without one OOD regime, tested on in-domain vs
  that regime;
- N1, router entropy against max-softmax per regime (routed models), with paired intervals
  of the difference;
- the chat model's abstain decision (the greedy reply is the refusal), where there is one.

`transfer(src_train, src_probe, dst_probe)` is N3: a detector fitted on one model's features
applied to another model of the same width, at the threshold chosen on the source.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tilelli.probe.detector import Detector, fit_detector
from tilelli.probe.metrics import auroc, auroc_ci, auroc_difference_ci, rates_at
from tilelli.probe.sets import IN_DOMAIN, REGIMES
from tilelli.probe.signals import CONTROL, Measured, orientation
from tilelli.train.stats import wilson_interval

DETECTORS = ("hidden+signals", "signals", "hidden")  # the first is "the detector"
MAIN = DETECTORS[0]
TARGET_FPR = 0.05  # N3: the source's threshold flags 5 % of its in-domain training prompts (out-of-fold)
OOD = REGIMES[1:]


def signal_names(m: Measured) -> list[str]:
    """The raw signals measured for this model, in a fixed order."""
    head = [n for n in ("max_softmax", "entropy", "prompt_bpb", "prompt_bpb_peak", "router_entropy",
                        "abstain_probability")
            if n in m.signals]
    return head + sorted(n for n in m.signals if n.startswith("router_entropy_l"))


def oriented(m: Measured, name: str) -> np.ndarray:
    """Signal `name` times its orientation: higher = more likely OOD."""
    return orientation(name) * m.signals[name]


def features(m: Measured, kind: str, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A detector's inputs: (N, S) signals, (N, H) hidden block, the signals' names. Signals
    are oriented (the abstain probability enters as its log: it spans tens of orders of
    magnitude); `names` picks the signals (default: all this model has). The hidden block is
    the mean-pooled final hidden state and the one at the prompt's last byte, side by side."""
    n = len(m.ids)
    picked = list(signal_names(m) if names is None else names) if kind != "hidden" else []
    cols = [np.log(np.maximum(oriented(m, x), 1e-300)) if x == "abstain_probability" else oriented(m, x)
            for x in picked]
    signals = np.stack(cols, 1) if cols else np.zeros((n, 0))
    hidden = np.c_[m.hidden, m.hidden_last] if kind != "signals" else np.zeros((n, 0))
    return signals, hidden, picked


def is_ood(m: Measured) -> np.ndarray:
    return np.array([r != IN_DOMAIN for r in m.regimes], dtype=float)


def _cell(scores: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    pos, neg = scores[y == 1], scores[y == 0]
    return {"auroc": auroc(pos, neg), "ci": list(auroc_ci(pos, neg)), "n_ood": int(len(pos)), "n_in": int(len(neg))}


def auroc_table(scores: np.ndarray, regimes: list[str]) -> dict[str, dict[str, Any]]:
    """{"all": in-domain vs every OOD prompt, regime: in-domain vs that regime} of `scores`."""
    reg = np.array(regimes)
    inside = reg == IN_DOMAIN
    table = {"all": _cell(scores, (~inside).astype(float))}
    for r in OOD:
        keep = inside | (reg == r)
        if (reg == r).any():
            table[r] = _cell(scores[keep], (reg[keep] == r).astype(float))
    return table


def _either_way(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The control's table as max(AUROC, 1 - AUROC), interval flipped with it."""
    out = {}
    for k, c in table.items():
        if c["auroc"] >= 0.5:
            out[k] = c
        else:
            out[k] = {**c, "auroc": 1 - c["auroc"], "ci": [1 - c["ci"][1], 1 - c["ci"][0]]}
    return out


def _fit(m: Measured, kind: str, keep: np.ndarray | None = None, names: list[str] | None = None) -> Detector:
    signals, hidden, picked = features(m, kind, names)
    y = is_ood(m)
    if keep is not None:
        signals, hidden, y = signals[keep], hidden[keep], y[keep]
    return fit_detector(signals, hidden, y, picked)


def _score(det: Detector, m: Measured, kind: str) -> np.ndarray:
    signals, hidden, _ = features(m, kind, det.signal_names)
    return det.score(signals, hidden)


def _n1(probe: Measured) -> dict[str, Any]:
    """Router entropy vs max-softmax, per regime and pooled: which has the higher AUROC, and
    whether the paired interval of the difference excludes 0."""
    reg = np.array(probe.regimes)
    inside = reg == IN_DOMAIN
    a, b = oriented(probe, "router_entropy"), oriented(probe, "max_softmax")
    rows = {}
    for r in ("all", *OOD):
        pos = ~inside if r == "all" else reg == r
        if not pos.any():
            continue
        lo, hi = auroc_difference_ci(a[pos], a[inside], b[pos], b[inside])
        ra, rb = auroc(a[pos], a[inside]), auroc(b[pos], b[inside])
        rows[r] = {"router_entropy": ra, "max_softmax": rb, "difference_ci": [lo, hi],
                   "winner": "router_entropy" if ra > rb else "max_softmax" if rb > ra else "tie",
                   "significant": bool(lo > 0 or hi < 0)}
    per = [rows[r] for r in OOD if r in rows]
    return {"regimes": rows, "router_wins": sum(r["winner"] == "router_entropy" for r in per),
            "router_wins_significant": sum(r["winner"] == "router_entropy" and r["significant"] for r in per),
            "max_softmax_wins": sum(r["winner"] == "max_softmax" for r in per),
            "max_softmax_wins_significant": sum(r["winner"] == "max_softmax" and r["significant"] for r in per),
            "of": len(per)}


def _rate(flags: np.ndarray) -> dict[str, Any]:
    k, n = int(flags.sum()), len(flags)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "ci": [lo, hi], "k": k, "n": n}


def evaluate(probe: Measured, train: Measured) -> dict[str, Any]:
    """Every number of the probe for one model (see the module doc)."""
    result: dict[str, Any] = {"signals": {}, "detectors": {}}
    for name in signal_names(probe):
        result["signals"][name] = {"orientation": "higher = OOD" if orientation(name) > 0 else "lower = OOD",
                                   "auroc": auroc_table(oriented(probe, name), probe.regimes)}
    result["control"] = {CONTROL: {"auroc": _either_way(auroc_table(probe.prompt_bytes, probe.regimes))}}
    scores: dict[str, np.ndarray] = {}
    for kind in DETECTORS:
        det = _fit(train, kind)
        scores[kind] = _score(det, probe, kind)
        result["detectors"][kind] = {"lambda": det.lam, "cv_auroc": det.cv_auroc,
                                     "inputs": len(det.signal_names) + det.basis.shape[1],
                                     "auroc": auroc_table(scores[kind], probe.regimes)}
    loro = {}
    for r in OOD:
        det = _fit(train, MAIN, keep=np.array([g != r for g in train.regimes]))
        keep = np.array([g in (IN_DOMAIN, r) for g in probe.regimes])
        held = probe.select(keep)
        loro[r] = _cell(_score(det, held, MAIN), is_ood(held))
    result["leave_one_regime_out"] = loro
    if "router_entropy" in probe.signals:
        result["n1"] = _n1(probe)
    if probe.refused is not None:
        reg = np.array(probe.regimes)
        result["abstain_decision"] = {
            "refusal_rate": {r: _rate(probe.refused[reg == r]) for r in REGIMES},
            "auroc": auroc_table(probe.refused.astype(float), probe.regimes)}
    result["prompts"] = [
        {"id": probe.ids[i], "regime": probe.regimes[i], "prompt_bytes": int(probe.prompt_bytes[i]),
         **{n: float(v[i]) for n, v in probe.signals.items()}, "detector": float(scores[MAIN][i]),
         "generated": probe.generated[i], **({} if probe.refused is None else {"refused": bool(probe.refused[i])})}
        for i in range(len(probe.ids))]
    return result


def transfer(src_train: Measured, src_probe: Measured, dst_probe: Measured, kind: str = MAIN) -> dict[str, Any]:
    """N3: a detector fitted on the source model's training split, applied unchanged (its PCA
    basis and standardisation too) to the target model's probe prompts; the threshold flags
    TARGET_FPR of the source's in-domain training prompts, out-of-fold. Only the signals both
    models have are used. Reported on the source itself (the baseline) and on the target."""
    if src_train.hidden.shape[1] != dst_probe.hidden.shape[1]:
        raise ValueError("a detector transfers only between models of the same width")
    common = [n for n in signal_names(src_train) if n in dst_probe.signals]
    det = _fit(src_train, kind, names=common)
    t = det.threshold_at_fpr(TARGET_FPR)
    out: dict[str, Any] = {"detector": kind, "signals_used": common, "threshold": t}
    for side, m in (("source", src_probe), ("target", dst_probe)):
        s, y = _score(det, m, kind), is_ood(m)
        out[side] = {**_cell(s, y), **rates_at(t, s[y == 1], s[y == 0])}
    return out


# --- Markdown -------------------------------------------------------------------------------------

LABELS = {"max_softmax": "1 − max-softmax", "entropy": "predictive entropy", "prompt_bpb": "prompt bits/byte",
          "prompt_bpb_peak": "prompt bits/byte, peak 32-byte window",
          "router_entropy": "router entropy (mean of layers)", "abstain_probability": "abstain probability",
          CONTROL: "control: prompt length (either way)", "hidden+signals": "**detector: hidden + signals**",
          "signals": "detector: signals only", "hidden": "detector: hidden only"}
REGIME_LABELS = {"gibberish": "gibberish", "language": "languages", "code": "code",
                 "world_knowledge": "world knowledge", "arithmetic": "arithmetic", "recall": "recall"}


def label(name: str) -> str:
    if name.startswith("router_entropy_l"):
        return f"router entropy, layer {name.removeprefix('router_entropy_l')}"
    return LABELS.get(name, name)


def fmt(cell: dict[str, Any]) -> str:
    """An AUROC with its bootstrap interval (when the cell has one)."""
    ci = cell.get("ci")
    return f"{cell['auroc']:.3f} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{cell['auroc']:.3f}"


def rows_of(result: dict[str, Any], layers: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(name, AUROC table) of every row a table shows: signals, control, detectors, abstain decision."""
    rows = [(n, s["auroc"]) for n, s in result["signals"].items() if layers or not n.startswith("router_entropy_l")]
    rows += [(n, c["auroc"]) for n, c in result["control"].items()]
    rows += [(n, d["auroc"]) for n, d in result["detectors"].items()]
    if "abstain_decision" in result:
        rows.append(("abstain decision (greedy reply is the refusal)", result["abstain_decision"]["auroc"]))
    return rows


def markdown(name: str, result: dict[str, Any]) -> str:
    """One model's tables: AUROC per row and regime, leave-one-regime-out, N1, abstain rates."""
    regimes = [r for r in OOD if r in result["signals"]["max_softmax"]["auroc"]]
    lines = [f"**`{name}`**: AUROC in-domain vs OOD (higher = OOD after orienting; 95 % bootstrap intervals; "
             "30 in-domain vs 30 OOD prompts per regime)", "",
             "| signal | all regimes | " + " | ".join(REGIME_LABELS[r] for r in regimes) + " |",
             "|---|---:|" + "---:|" * len(regimes)]
    for n, table in rows_of(result, layers=True):
        lines.append(f"| {label(n)} | {fmt(table['all'])} | " + " | ".join(fmt(table[r]) for r in regimes) + " |")
    loro = result["leave_one_regime_out"]
    lines.append("| detector, leave-one-regime-out (trained without that regime) | — | "
                 + " | ".join(fmt(loro[r]) for r in regimes) + " |")
    if "n1" in result:
        n1 = result["n1"]
        lines += ["", f"N1, router entropy vs max-softmax per regime: router entropy higher in {n1['router_wins']} of "
                  f"{n1['of']} ({n1['router_wins_significant']} with the paired 95 % interval of the difference "
                  f"above 0), max-softmax higher in {n1['max_softmax_wins']} ({n1['max_softmax_wins_significant']} "
                  "significant)."]
    if "abstain_decision" in result:
        rates = result["abstain_decision"]["refusal_rate"]
        lines += ["", "Greedy reply is the refusal: " + ", ".join(
            f"{r.replace('_', ' ')} {100 * rates[r]['rate']:.0f} %" for r in REGIMES) + "."]
    return "\n".join(lines) + "\n"
