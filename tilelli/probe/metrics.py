"""AUROC with ties, bootstrap intervals, ROC curves and the rates at a threshold (numpy only).

Out-of-domain prompts are the positives, in-domain prompts the negatives: AUROC is the
probability that a random OOD prompt scores higher than a random in-domain one, ties counted
half (the Mann-Whitney statistic); 0.5 is chance, 1.0 perfect, below 0.5 the signal points the
other way. Intervals resample prompts within each class (the class sizes are fixed by design).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 1000


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    counts = np.diff(np.r_[starts, len(xs)])
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(starts + (counts + 1) / 2, counts)
    return ranks


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs at least one positive and one negative")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("AUROC of scores that are not all finite")
    ranks = _midranks(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _boot_aurocs(pos: np.ndarray, neg: np.ndarray, ip: np.ndarray, ineg: np.ndarray) -> np.ndarray:
    """AUROC of each resample: rows of `ip` (R, P) and `ineg` (R, N) index `pos` and `neg`.
    Pairwise comparisons, (R, P, N) at once: meant for sets of hundreds of prompts."""
    p, n = pos[ip][:, :, None], neg[ineg][:, None, :]  # (R, P, 1), (R, 1, N)
    return (p > n).mean((1, 2)) + 0.5 * (p == n).mean((1, 2))


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def auroc_ci(positive: Sequence[float], negative: Sequence[float], n_boot: int = N_BOOT, level: float = 0.95,
             seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `auroc`, resampling each class on its own."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    rng = np.random.default_rng(seed)
    ip, ineg = rng.integers(0, len(pos), (n_boot, len(pos))), rng.integers(0, len(neg), (n_boot, len(neg)))
    return _interval(_boot_aurocs(pos, neg, ip, ineg), level)


def auroc_difference_ci(pos_a: Sequence[float], neg_a: Sequence[float], pos_b: Sequence[float],
                        neg_b: Sequence[float], n_boot: int = N_BOOT, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Interval of auroc(a) - auroc(b) for two scores of the *same* prompts (paired: each
    resample picks the same prompts for both), so a shared hard prompt does not widen it."""
    pa, na, pb, nb = (np.asarray(v, dtype=float) for v in (pos_a, neg_a, pos_b, neg_b))
    rng = np.random.default_rng(seed)
    ip, ineg = rng.integers(0, len(pa), (n_boot, len(pa))), rng.integers(0, len(na), (n_boot, len(na)))
    return _interval(_boot_aurocs(pa, na, ip, ineg) - _boot_aurocs(pb, nb, ip, ineg), level)


def roc_curve(positive: Sequence[float], negative: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over every threshold, from (0, 0) to (1, 1)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = np.r_[0.0, [(neg >= t).mean() for t in thresholds]]
    tpr = np.r_[0.0, [(pos >= t).mean() for t in thresholds]]
    return fpr, tpr


def rates_at(threshold: float, positive: Sequence[float], negative: Sequence[float]) -> dict[str, float]:
    """True- and false-positive rates of the rule `score > threshold`."""
    return {"tpr": float((np.asarray(positive) > threshold).mean()),
            "fpr": float((np.asarray(negative) > threshold).mean())}
