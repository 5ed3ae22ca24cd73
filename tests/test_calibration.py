"""Bias correction and split-conformal intervals on simulated held-out data."""

from __future__ import annotations

import numpy as np
import pytest

from xrayage.calibration import (
    empirical_coverage,
    fit_bias_correction,
    fit_conformal,
    interval,
)


def simulate(n: int, seed: int, hetero: bool = False) -> tuple[np.ndarray, ...]:
    """Predictions regressed to the mean (slope 0.6), as age models produce."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    sigma = 2.0 + 0.1 * age if hetero else np.full(n, 6.0)
    pred = 0.6 * age + 20.0 + rng.normal(0, sigma)
    return age, pred, sigma


def test_corrected_gap_removes_age_correlation() -> None:
    age, pred, _ = simulate(2000, 0)
    bc = fit_bias_correction(xray_age=pred, age_years=age)
    assert bc.slope == pytest.approx(0.6, abs=0.03) and bc.n == 2000
    raw = pred - age
    corrected = np.array([bc.corrected_gap(xray_age=p, age_years=a)
                          for p, a in zip(pred, age, strict=True)])
    assert np.corrcoef(raw, age)[0, 1] < -0.5
    assert abs(np.corrcoef(corrected, age)[0, 1]) < 1e-6
    # and on new data from the same population it stays near zero
    age2, pred2, _ = simulate(2000, 1)
    corrected2 = pred2 - (bc.slope * age2 + bc.intercept)
    assert abs(np.corrcoef(corrected2, age2)[0, 1]) < 0.08


@pytest.mark.parametrize("hetero", [False, True])
def test_conformal_coverage_on_held_out(hetero: bool) -> None:
    age, pred, sigma = simulate(1000, 2, hetero)
    cal = fit_conformal(xray_age=pred, age_years=age, sigma=sigma if hetero else None,
                        coverage=0.9)
    test_age, test_pred, test_sigma = simulate(20000, 3, hetero)
    bounds = np.array([interval(cal, p, s) for p, s in zip(test_pred, test_sigma, strict=True)])
    cover = empirical_coverage(lower=bounds[:, 0], upper=bounds[:, 1], age_years=test_age)
    assert 0.88 <= cover <= 0.93


def test_scaled_interval_needs_sigma() -> None:
    age, pred, sigma = simulate(200, 4, True)
    cal = fit_conformal(xray_age=pred, age_years=age, sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        interval(cal, 50.0, None)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        fit_bias_correction(xray_age=np.array([1.0, 2.0]), age_years=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="too few"):
        fit_conformal(xray_age=np.zeros(5), age_years=np.ones(5), coverage=0.9)
    with pytest.raises(ValueError, match="same shape"):
        fit_conformal(xray_age=np.zeros(5), age_years=np.ones(6))
    nan_pred = np.array([np.nan, *range(30)], dtype=float)
    assert fit_conformal(xray_age=nan_pred, age_years=np.arange(31.0), coverage=0.5).n == 30


def test_two_age_arrays_are_passed_only_by_keyword() -> None:
    """Swapped positional ages would give wrong numbers silently; keywords make it an error."""
    from xrayage.card import BiasCorrection
    from xrayage.cohort.accuracy import age_accuracy
    from xrayage.metrics import age_metrics, bootstrap_ci, grouped_metrics

    age, pred = np.arange(30.0), np.arange(30.0) + 1
    for fn in (age_metrics, bootstrap_ci, fit_bias_correction, fit_conformal, age_accuracy):
        with pytest.raises(TypeError):
            fn(age, pred)
    with pytest.raises(TypeError):
        grouped_metrics(age, pred, {})
    with pytest.raises(TypeError):
        BiasCorrection(1.0, 0.0).corrected_gap(50.0, 40.0)
    assert BiasCorrection(1.0, 0.0).corrected_gap(xray_age=50.0, age_years=40.0) == 10.0
