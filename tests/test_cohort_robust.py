"""CR2 cluster-robust errors with Satterthwaite df, checked against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, stats

from xrayage.cohort.robust import cr2_ols


def test_intercept_only_is_the_one_sample_t_test() -> None:
    y = np.array([1.0, 2.0, 4.0, 7.0])
    fit = cr2_ols(y, np.ones((4, 1)))
    # by hand: mean 3.5, s^2 = (6.25 + 2.25 + 0.25 + 12.25) / 3 = 7, se = sqrt(7 / 4)
    assert fit.params[0] == pytest.approx(3.5)
    assert fit.bse[0] == pytest.approx(np.sqrt(7 / 4))
    assert fit.df[0] == pytest.approx(3.0)
    assert fit.pvalues[0] == pytest.approx(stats.ttest_1samp(y, 0).pvalue)


def test_two_groups_give_welch_variance_and_working_model_df() -> None:
    y = np.array([2.0, 4.0, 9.0, 1.0, 3.0, 3.5, 6.0, 0.5, 2.0])
    g = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], float)
    fit = cr2_ols(y, np.column_stack([np.ones(9), g]))
    n1, n0 = 4, 5
    welch = y[g == 1].var(ddof=1) / n1 + y[g == 0].var(ddof=1) / n0
    df = (1 / n1 + 1 / n0) ** 2 / (1 / (n1**2 * (n1 - 1)) + 1 / (n0**2 * (n0 - 1)))
    assert fit.params[1] == pytest.approx(y[g == 1].mean() - y[g == 0].mean())
    assert fit.bse[1] ** 2 == pytest.approx(welch)
    assert fit.df[1] == pytest.approx(df)  # 6.5676 here


def _dense_reference(y: np.ndarray, x: np.ndarray, cl: np.ndarray) -> tuple[float, float]:
    """Pustejovsky & Tipton (2018) eq. 6-8 written with full n x n matrices (slope only)."""
    n = len(y)
    m = np.linalg.inv(x.T @ x)
    h = x @ m @ x.T
    e = y - x @ (m @ x.T @ y)
    c = np.array([0.0, 1.0])
    vc, cols = 0.0, []
    for g in np.unique(cl):
        rows = np.flatnonzero(cl == g)
        a = linalg.sqrtm(np.linalg.inv(np.eye(len(rows)) - h[np.ix_(rows, rows)])).real
        w = a @ x[rows] @ m @ c
        vc += float(w @ e[rows]) ** 2
        full = np.zeros(n)
        full[rows] = w
        cols.append((np.eye(n) - h) @ full)
    gmat = np.column_stack(cols)
    lam = np.linalg.eigvalsh(gmat.T @ gmat)
    return vc, lam.sum() ** 2 / (lam**2).sum()


def test_clustered_matches_the_dense_formula() -> None:
    rng = np.random.default_rng(3)
    cl = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 4, 4, 5, 6, 6])
    x = np.column_stack([np.ones(15), (cl < 2).astype(float)])  # 2 treated clusters
    y = rng.normal(size=15) + rng.normal(size=7)[cl]
    fit = cr2_ols(y, x, cl)
    vc, df = _dense_reference(y, x, cl)
    assert fit.cov[1, 1] == pytest.approx(vc)
    assert fit.df[1] == pytest.approx(df)
    assert fit.df[1] < 3  # the contrast rests on two clusters: few df, wide interval
    lo, hi = fit.conf_int(0.05)[1]
    assert hi - lo == pytest.approx(2 * stats.t.ppf(0.975, df) * np.sqrt(vc))
