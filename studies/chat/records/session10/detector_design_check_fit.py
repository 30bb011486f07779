"""Fit detector variants on the pickled signals of detector_design_check.py and print each one's
refusal rates at its own conformal threshold (alpha 0.03 / 2 over the calibration prompts, the
higher of each prompt's two readings)."""

import pickle
import sys

import numpy as np

from tilelli.chat.abstain import conformal_threshold, highest
from tilelli.chat.detector import Detector

with open(sys.argv[1], "rb") as f:
    d = pickle.load(f)
sig, conv = d["sig"], d["conv_rows"]


def fit(parts: list[tuple[str, bool | None]]) -> Detector:
    xs, ys = [], []
    for k, label in parts:
        keep = [i for i, s in enumerate(sig[k]) if s.features]
        xs.append(np.array([sig[k][i].features for i in keep]))
        ys.append(np.array(d["train_labels"])[keep] if label is None else np.full(len(keep), label))
    return Detector.fit(np.vstack(xs), np.concatenate(ys).astype(bool), {})


variants = {"A train only": [("train", None)],
            "B train+fresh": [("train", None), ("fresh_facts", True), ("fresh_ans", False)]}
for name, parts in variants.items():
    det = fit(parts)

    def top(s, det=det):
        return highest(det.score(r.features) for r in s.readings)

    t = conformal_threshold([top(s) for s in sig["cal"]], 0.015)
    line = f"{name}: cv {det.record['cv_auroc']:.4f} t {t:.2f}"
    for k in ("facts", "requests", "small_talk"):
        line += f" {k} {np.mean([top(s) > t for s in sig[k]]):.3f}"
    for kind in ("fact", "request", "small_talk", "follow_up"):
        for ctx in ("after_story", "after_refusal", "after_small_talk"):
            picked = [s for s, r in zip(sig["conv"], conv, strict=True) if r["kind"] == kind and r["context"] == ctx]
            if picked:
                line += f" | {kind}/{ctx[6:]} {np.mean([top(s) > t for s in picked]):.2f}"
    print(line)
