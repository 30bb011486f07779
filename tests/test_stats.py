"""Welch's test and the Student t tail against closed forms and numerical integration."""

import math

import pytest

from tilelli.train.stats import incomplete_beta, t_quantile, t_two_sided_p, welch


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.7])
def test_t_tail_matches_closed_forms_for_one_and_two_df(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)


@pytest.mark.parametrize("df", [2.7, 5.88, 13.3])
def test_t_tail_matches_integrating_the_density_for_fractional_df(df):
    def density(x: float) -> float:
        c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        return math.exp(c - (df + 1) / 2 * math.log1p(x * x / df))

    t, n = 1.9, 20000
    h = t / n  # Simpson's rule over [0, t]
    inner = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    assert t_two_sided_p(t, df) == pytest.approx(1 - 2 * inner * h / 3, abs=1e-9)


def test_t_quantiles_match_tables():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)
    assert t_quantile(0.025, 10) == pytest.approx(-2.228139, abs=1e-6)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_incomplete_beta_symmetry_and_bounds():
    assert incomplete_beta(2.5, 1.5, 0.3) == pytest.approx(1 - incomplete_beta(1.5, 2.5, 0.7), abs=1e-13)
    assert incomplete_beta(3, 4, 0) == 0 and incomplete_beta(3, 4, 1) == 1
    with pytest.raises(ValueError):
        incomplete_beta(1, 1, 1.5)


def test_welch_statistics_by_hand():
    r = welch([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    # means 3 and 6; variances of the means 0.5 and 2 -> se sqrt(2.5); df = 2.5^2 / (0.5^2/4 + 2^2/4)
    assert r.diff == -3 and r.t == pytest.approx(-3 / math.sqrt(2.5)) and r.df == pytest.approx(6.25 / 1.0625)
    half = t_quantile(0.975, r.df) * math.sqrt(2.5)
    assert r.diff_ci == pytest.approx((-3 - half, -3 + half)) and r.diff_ci[1] > 0  # not significant
    assert r.p == pytest.approx(t_two_sided_p(r.t, r.df)) and 0.05 < r.p < 0.2
    assert r.hedges_g < 0 and r.hedges_g_ci[0] < r.hedges_g < r.hedges_g_ci[1]
    far = welch([1.40, 1.41, 1.42], [1.50, 1.52, 1.51])
    assert far.p < 0.001 and far.diff_ci[1] < 0 and far.hedges_g_ci[1] < 0


def test_welch_refuses_too_few_or_constant_values():
    with pytest.raises(ValueError, match=">= 2 values"):
        welch([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="zero variance"):
        welch([1.0, 1.0], [2.0, 2.0])
