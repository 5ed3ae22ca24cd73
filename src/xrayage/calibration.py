"""Post-processing fitted on held-out data: age-bias correction and conformal intervals.

Both are fitted once, on predictions for images the model never trained on, and
shipped in the model card (:class:`~xrayage.card.BiasCorrection`,
:class:`~xrayage.card.ConformalCalibration`). Every function that takes both ages takes
them by keyword (``xray_age=``, ``age_years=``), so they cannot be swapped silently.
"""

from __future__ import annotations

import math

import numpy as np

from .card import BiasCorrection, ConformalCalibration, ModelCard


def fit_bias_correction(*, xray_age: np.ndarray, age_years: np.ndarray) -> BiasCorrection:
    """Fit the linear age-bias correction ``xray_age ~ slope * age + intercept``.

    Parameters
    ----------
    xray_age, age_years : array-like
        Held-out predictions and chronological ages, in years.

    Returns
    -------
    BiasCorrection
        Its corrected gap is the residual of this fit, which has zero correlation
        with chronological age on the data it was fitted on.

    Examples
    --------
    >>> bc = fit_bias_correction(xray_age=np.array([40., 50., 60.]),
    ...                          age_years=np.array([30., 50., 70.]))
    >>> round(bc.slope, 3), round(bc.intercept, 3)
    (0.5, 25.0)
    """
    pred, age = _pair(xray_age, age_years)
    if len(age) < 3 or np.ptp(age) == 0:
        raise ValueError("bias correction needs at least 3 references with different ages")
    slope, intercept = np.polyfit(age, pred, 1)
    return BiasCorrection(slope=float(slope), intercept=float(intercept), n=len(age))


def fit_conformal(
    *,
    xray_age: np.ndarray,
    age_years: np.ndarray,
    sigma: np.ndarray | None = None,
    coverage: float = 0.9,
) -> ConformalCalibration:
    """Split-conformal calibration of a prediction interval.

    The score is ``|age - xray_age|`` (or divided by the predicted ``sigma`` when
    given, which makes the interval adapt to each image). The quantile is the
    ``ceil((n + 1) * coverage) / n`` empirical quantile of the scores, which
    guarantees at least `coverage` on exchangeable new data.

    Parameters
    ----------
    xray_age, age_years : array-like
        Held-out predictions and chronological ages, in years (rows with a non-finite
        value are dropped).
    sigma : array-like, optional
        The model's predicted standard deviations: a scaled (adaptive) interval.
    coverage : float
        Nominal coverage, in (0, 1).

    Returns
    -------
    ConformalCalibration

    Examples
    --------
    >>> cal = fit_conformal(xray_age=np.zeros(99), age_years=np.arange(99.0), coverage=0.9)
    >>> cal.quantile
    89.0
    """
    if not 0 < coverage < 1:
        raise ValueError("coverage must be in (0, 1)")
    scale = np.ones_like(np.asarray(xray_age, dtype=np.float64)) if sigma is None else sigma
    pred, age, scale = _pair(xray_age, age_years, scale)
    scores = np.abs(age - pred) / scale
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        raise ValueError(f"{n} calibration images are too few for {coverage:.0%} coverage")
    quantile = float(np.sort(scores)[rank - 1])
    return ConformalCalibration(coverage=coverage, quantile=quantile, scaled=sigma is not None,
                                n=n)


def interval(
    cal: ConformalCalibration, xray_age: float, sigma: float | None = None
) -> tuple[float, float]:
    """Return the (lower, upper) prediction interval in years for one prediction."""
    if cal.scaled:
        if sigma is None:
            raise ValueError("this calibration is scaled by sigma, but the model gave none")
        half = cal.quantile * sigma
    else:
        half = cal.quantile
    return xray_age - half, xray_age + half


def empirical_coverage(*, lower: np.ndarray, upper: np.ndarray, age_years: np.ndarray) -> float:
    """Share of chronological ages inside their intervals."""
    age = np.asarray(age_years, dtype=np.float64)
    return float(np.mean((age >= np.asarray(lower)) & (age <= np.asarray(upper))))


def split_coverage(*, xray_age: np.ndarray, age_years: np.ndarray, groups: list[str],
                   coverage: float = 0.9, seed: int = 0) -> float:
    """Coverage measured out of sample: fit the interval on half of the groups (patients),
    test it on the other half, swap, and average."""
    pred, age = np.asarray(xray_age, float), np.asarray(age_years, float)
    names = sorted(set(groups))
    half = set(np.random.default_rng(seed).permutation(names)[: len(names) // 2].tolist())
    in_a = np.array([g in half for g in groups])
    results = []
    for fit_mask in (in_a, ~in_a):
        cal = fit_conformal(xray_age=pred[fit_mask], age_years=age[fit_mask],
                            coverage=coverage)
        half_width = cal.quantile
        inside = np.abs(age[~fit_mask] - pred[~fit_mask]) <= half_width
        results.append(float(inside.mean()))
    return float(np.mean(results))


def calibrate_card(card: ModelCard, *, xray_age: np.ndarray, age_years: np.ndarray,
                   groups: list[str], coverage: float = 0.9, seed: int = 0) -> ModelCard:
    """Fit the bias correction and the conformal interval on held-out predictions, and
    record them (with the split-half empirical coverage) in `card`, which is returned."""
    card.bias_correction = fit_bias_correction(xray_age=xray_age, age_years=age_years)
    cal = fit_conformal(xray_age=xray_age, age_years=age_years, coverage=coverage)
    measured = split_coverage(xray_age=xray_age, age_years=age_years, groups=groups,
                              coverage=coverage, seed=seed)
    card.conformal = ConformalCalibration(coverage=cal.coverage, quantile=cal.quantile,
                                          n=cal.n, empirical_coverage=round(measured, 4))
    return card


def _pair(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Float64 copies of equal-shaped arrays, keeping the rows finite in all of them."""
    values = [np.asarray(a, dtype=np.float64) for a in arrays]
    if any(v.shape != values[0].shape for v in values):
        raise ValueError("predictions, ages and sigmas must have the same shape")
    keep = np.logical_and.reduce([np.isfinite(v) for v in values])
    return tuple(v[keep] for v in values)
