"""The trained OOD detector: L2-regularised logistic regression in numpy (no sklearn).

Inputs are a few raw signals and a hidden-state block (hundreds of dimensions, more than there
are training prompts). The hidden block is reduced to its top N_COMPONENTS principal
components, the signals are kept as they are, and every column is standardised; the PCA basis
and the scaling come from the training split and are stored with the detector, so applying it
to another model's features uses the *source's* transformation (the honest transplant). The
PCA keeps the fit small (fewer parameters than prompts) and fast.

The classes are weighted to equal total weight, since the training split holds one in-domain
regime against six OOD ones. The L2 strength is chosen by stratified k-fold cross-validation
on the training split alone: the lowest class-weighted log loss on the held-out folds (a
proper score: it also punishes an over-confident scale, which a pooled AUROC over five
separately fitted folds would not see; on a tie the stronger penalty). Those out-of-fold
scores are kept: a threshold picked on them is not flattered by the detector having seen its
own training prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilelli.probe.metrics import auroc

LAMBDAS = (1000.0, 100.0, 10.0, 1.0, 0.1)  # strongest first: each fit warm-starts the next
FOLDS = 5
N_COMPONENTS = 64


def _balanced(y: np.ndarray) -> np.ndarray:
    """Per-row weights giving each class half the total weight."""
    n = len(y)
    return np.where(y == 1, n / (2 * max(y.sum(), 1)), n / (2 * max((1 - y).sum(), 1)))


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Class-balanced mean log loss (nats) of log-odds `logits` for labels `y`."""
    return float(np.mean(_balanced(y) * np.logaddexp(0, np.where(y == 1, -logits, logits))))


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float, start: np.ndarray | None = None,
                 iters: int = 50) -> np.ndarray:
    """[w..., b] minimising the class-balanced log loss + lam/2 |w|^2 by Newton's method (the
    penalty makes it strictly convex, so it converges even on separable data); the bias, last,
    is not penalised."""
    n, d = x.shape
    weight = _balanced(y)  # (N,)
    a = np.c_[x, np.ones(n)]  # (N, D+1)
    penalty = np.r_[np.full(d, lam), 0.0]
    theta = np.zeros(d + 1) if start is None else start.copy()
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(a @ theta, -30, 30)))  # (N,)
        grad = a.T @ (weight * (p - y)) + penalty * theta
        hess = (a.T * (weight * p * (1 - p))) @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-6:
            break
    return theta


@dataclass
class Detector:
    signal_names: list[str]
    s_mean: np.ndarray  # (S,) signal standardisation
    s_scale: np.ndarray  # (S,)
    h_mean: np.ndarray  # (H,) hidden-block centring
    basis: np.ndarray  # (H, K) principal directions of the training split's hidden block
    p_scale: np.ndarray  # (K,) spread of each component
    theta: np.ndarray  # (S + K + 1,) weights, then the bias
    lam: float
    cv_auroc: float  # AUROC of the out-of-fold scores at `lam` on the training split
    oof_scores: np.ndarray  # (N_train,) out-of-fold scores at `lam`
    oof_labels: np.ndarray  # (N_train,)

    def transform(self, signals: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """(N, S) signals and (N, H) hidden block -> (N, S + K) standardised inputs."""
        s = (signals - self.s_mean) / self.s_scale
        h = (hidden - self.h_mean) @ self.basis / self.p_scale
        return np.c_[s, h]

    def score(self, signals: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """The log-odds of OOD for each prompt: higher = more likely OOD."""
        return self.transform(signals, hidden) @ self.theta[:-1] + self.theta[-1]

    def threshold_at_fpr(self, fpr: float) -> float:
        """The score above which `fpr` of the in-domain training prompts fall (out-of-fold)."""
        return float(np.quantile(self.oof_scores[self.oof_labels == 0], 1 - fpr))


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number per row, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def _nonzero(scale: np.ndarray) -> np.ndarray:
    return np.where(scale > 1e-12, scale, 1.0)


def fit_detector(signals: np.ndarray, hidden: np.ndarray, y: np.ndarray, signal_names: list[str],
                 lambdas: tuple[float, ...] = LAMBDAS, folds: int = FOLDS, seed: int = 0) -> Detector:
    """Standardise, reduce the hidden block, choose the L2 strength by cross-validation, refit
    on the whole split. `signals` (N, S) and `hidden` (N, H) may have no columns."""
    s_mean, s_scale = signals.mean(0), _nonzero(signals.std(0))
    h_mean = hidden.mean(0)
    k = min(N_COMPONENTS, hidden.shape[1], max(len(y) - 1, 0))
    basis = np.linalg.svd(hidden - h_mean, full_matrices=False)[2][:k].T if hidden.shape[1] else np.zeros((0, 0))
    p_scale = _nonzero(((hidden - h_mean) @ basis).std(0))
    det = Detector(list(signal_names), s_mean, s_scale, h_mean, basis, p_scale, np.zeros(0), 0.0, 0.0,
                   np.zeros(0), y.copy())
    z = det.transform(signals, hidden)
    fold = _folds(y, folds, seed)
    oof = {lam: np.empty(len(y)) for lam in lambdas}
    loss = dict.fromkeys(lambdas, 0.0)
    for f in range(folds):
        train, test = fold != f, fold == f
        theta = None
        for lam in lambdas:
            theta = fit_logistic(z[train], y[train], lam, theta)
            oof[lam][test] = z[test] @ theta[:-1] + theta[-1]
            loss[lam] += log_loss(oof[lam][test], y[test]) / folds
    det.lam = min(lambdas, key=lambda lam: (loss[lam], -lam))
    det.oof_scores = oof[det.lam]
    det.cv_auroc = auroc(det.oof_scores[y == 1], det.oof_scores[y == 0])
    det.theta = fit_logistic(z, y, det.lam)
    return det
