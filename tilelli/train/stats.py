"""Welch's t-test and effect sizes for comparing a few training seeds of two models, and the
Wilson interval of a rate (refusals, false refusals).

Why our own: the A/B needs one two-sample test and a t quantile, which does not justify scipy
as a dependency. The Student t tail comes from the regularized incomplete beta function
(continued fraction, as in Numerical Recipes 6.4); tests check it against closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), x < (a+1)/(a+b+2)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0 <= x <= 1:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0, 1):
        return float(x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` (possibly fractional) degrees of freedom."""
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The t value with P(T <= t) = q, by bisection on the two-sided tail."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    tail = 2 * min(q, 1 - q)  # two-sided probability beyond |t|
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > tail:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > tail else (lo, mid)
    return math.copysign((lo + hi) / 2, q - 0.5)


@dataclass(frozen=True)
class Welch:
    """`a` minus `b`: negative `diff` and `hedges_g` mean `a` is lower (for bpb: better)."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    diff: float
    diff_ci: tuple[float, float]
    t: float
    df: float
    p: float
    hedges_g: float
    hedges_g_ci: tuple[float, float]
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch:
    """Welch's unequal-variance t-test of mean(a) - mean(b), with the difference's confidence
    interval (Welch-Satterthwaite df) and Hedges' g (bias-corrected pooled-SD effect size)
    with its large-sample normal interval (Hedges & Olkin), which is rough for 3 seeds."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs >= 2 values per group, got {len(a)} and {len(b)}")
    (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
    na, nb = len(a), len(b)
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0:
        raise ValueError("both groups have zero variance; the t statistic is undefined")
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    diff = ma - mb
    t = diff / se
    half = t_quantile(0.5 + level / 2, df) * se
    pooled = math.sqrt(((na - 1) * sa * sa + (nb - 1) * sb * sb) / (na + nb - 2))
    g = diff / pooled * (1 - 3 / (4 * (na + nb) - 9))
    g_se = math.sqrt((na + nb) / (na * nb) + g * g / (2 * (na + nb)))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return Welch(na, nb, ma, mb, sa, sb, diff, (diff - half, diff + half), t, df, t_two_sided_p(t, df), g,
                 (g - z * g_se, g + z * g_se), level)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n: unlike the normal approximation it stays in
    [0, 1] and is sound at 0 / n and n / n, which refusal rates often are."""
    if n <= 0:
        raise ValueError("a proportion needs n >= 1")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
