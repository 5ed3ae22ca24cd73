"""Post-processing fitted on held-out data: age-bias correction and conformal intervals.

Both are fitted once, on predictions for images the model never trained on, and
shipped in the model card (:class:`~xrayage.card.BiasCorrection`,
:class:`~xrayage.card.ConformalCalibration`). Every function that takes both ages takes
them by keyword (``xray_age=``, ``age_years=``), so they cannot be swapped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .card import BiasCorrection, ConformalCalibration, ModelCard
from .folds import assign_folds
from .metrics import age_band


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
    return ConformalCalibration(coverage=coverage, quantile=_conformal_quantile(scores, coverage),
                                scaled=sigma is not None, n=len(scores))


STRETCHES = tuple(round(1.0 + 0.05 * i, 2) for i in range(11))
"""Candidate centre stretches of :func:`fit_interval` (1.0 to 1.5)."""

MIN_VIEW = 50
"""Calibration images a view needs for a quantile of its own (Mondrian by view)."""

MIN_BAND = 20
"""Images an age band (:func:`xrayage.metrics.age_band`) needs before its coverage counts."""


def interval(cal: ConformalCalibration, xray_age: float, sigma: float | None = None,
             view: str | None = None) -> tuple[float, float]:
    """Return the (lower, upper) interval in years for the chronological age.

    Examples
    --------
    >>> cal = ConformalCalibration(coverage=0.9, quantile=10.0, centre_slope=1.2,
    ...                            centre_mean=50.0, view_quantiles={"AP": 12.0})
    >>> interval(cal, 60.0), interval(cal, 60.0, view="AP")
    ((52.0, 72.0), (50.0, 74.0))
    """
    centre = cal.centre_mean + cal.centre_slope * (xray_age - cal.centre_mean)
    if cal.scaled:
        if sigma is None:
            raise ValueError("this calibration is scaled by sigma, but the model gave none")
        half = cal.quantile * sigma
    else:
        half = cal.view_quantiles.get((view or "").upper(), cal.quantile)
    return centre - half, centre + half


def empirical_coverage(*, lower: np.ndarray, upper: np.ndarray, age_years: np.ndarray) -> float:
    """Share of chronological ages inside their intervals."""
    age = np.asarray(age_years, dtype=np.float64)
    return float(np.mean((age >= np.asarray(lower)) & (age <= np.asarray(upper))))


def fit_interval(*, xray_age: np.ndarray, age_years: np.ndarray, groups: Sequence[str],
                 views: Sequence[str | None] | None = None, coverage: float = 0.9,
                 stretches: Sequence[float] = STRETCHES, tolerance: float = 0.04,
                 folds: int = 5, repeats: int = 3, seed: int = 0) -> ConformalCalibration:
    """Fit the per-image interval: a stretched centre and Mondrian quantiles by view.

    The stretch is chosen among `stretches` by a patient-grouped `folds`-fold
    cross-validation on these predictions (`repeats` fold draws, their coverages averaged,
    so the choice does not hang on one draw): the narrowest interval whose out-of-fold
    coverage is within `tolerance` of `coverage` in every age band with at least
    :data:`MIN_BAND` images, else the one closest to it in its worst band. The quantiles
    are then fitted on all rows: one per view with at least :data:`MIN_VIEW` images, and
    one over all.

    Parameters
    ----------
    xray_age, age_years : array-like
        Held-out (out-of-fold) predictions and chronological ages, in years.
    groups : sequence of str
        Patient of each row: the inner folds never split one.
    views : sequence of str or None, optional
        View position (``PA``, ``AP``) of each row.
    coverage : float
        Nominal coverage, in (0, 1).
    stretches : sequence of float
        Candidate stretches; ``(1.0,)`` gives a plain interval around the X-ray age.
    tolerance : float
        Largest accepted distance of a band's coverage from `coverage`.
    folds, repeats : int
        Folds of the cross-validation, and its fold draws.
    seed : int

    Returns
    -------
    ConformalCalibration
    """
    pred, age, view, group = _rows(xray_age, age_years, views, groups)
    candidates = sorted(set(float(k) for k in stretches))
    if not candidates:
        raise ValueError("stretches is empty")
    if len(candidates) > 1:
        draws = [assign_folds(group, folds, ages=age, seed=seed + r) for r in range(repeats)]
        scored = []
        for k in candidates:
            inside, width = np.zeros(len(age)), np.zeros(len(age))

            def fit(train: np.ndarray, k: float = k) -> ConformalCalibration:
                return _fit_fixed(pred[train], age[train], view[train], coverage, k)

            for fold in draws:
                lower, upper = _crossfit(pred, view, fold, fit)
                inside += ((age >= lower) & (age <= upper)) / repeats
                width += (upper - lower) / repeats
            scored.append((_worst_band(inside, age, coverage), float(width.mean()), k))
        within = [(width, k) for worst, width, k in scored if worst <= tolerance]
        candidates = [min(within)[1] if within else min(scored)[2]]
    return _fit_fixed(pred, age, view, coverage, candidates[0])


def crossfit_interval(*, xray_age: np.ndarray, age_years: np.ndarray, groups: Sequence[str],
                      views: Sequence[str | None] | None = None,
                      sexes: Sequence[str | None] | None = None,
                      fold: Sequence[int] | None = None, coverage: float = 0.9,
                      stretches: Sequence[float] = STRETCHES, seed: int = 0) -> dict[str, Any]:
    """Measure :func:`fit_interval` out of fold: fit it on all folds but one, apply it to
    that one, and report coverage and width overall and by age band, view and sex.

    `fold` gives the outer folds (e.g. the folds of the out-of-fold predictions); by
    default 5 folds of :func:`xrayage.folds.assign_folds`. The stretch is chosen again
    inside each outer fold.
    """
    n = len(np.asarray(xray_age))
    sex = [None] * n if sexes is None else list(sexes)
    given = np.zeros(n, int) if fold is None else np.asarray(fold, int)
    pred, age, view, group, sex_kept, outer_kept = _rows(xray_age, age_years, views, groups,
                                                         sex, given)
    if fold is None:
        outer_kept = assign_folds(group, 5, ages=age, seed=seed)

    def fit(train: np.ndarray) -> ConformalCalibration:
        return fit_interval(xray_age=pred[train], age_years=age[train],
                            groups=[g for g, t in zip(group, train, strict=True) if t],
                            views=view[train].tolist(), coverage=coverage,
                            stretches=stretches, seed=seed)

    lower, upper = _crossfit(pred, view, outer_kept, fit)
    return interval_rates(lower=lower, upper=upper, age_years=age, views=view.tolist(),
                          sexes=sex_kept.tolist())


def interval_rates(*, lower: Sequence[float] | np.ndarray, upper: Sequence[float] | np.ndarray,
                   age_years: Sequence[float] | np.ndarray,
                   views: Sequence[str | None] | None = None,
                   sexes: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Coverage and mean width of intervals, overall and by age band, view and sex.

    Returns
    -------
    dict
        ``{"n", "coverage", "mean_width", "by_age_band": {label: {...}}, "by_view",
        "by_sex"}``.
    """
    lo, hi, age = (np.asarray(a, dtype=np.float64) for a in (lower, upper, age_years))
    inside = (age >= lo) & (age <= hi)
    width = hi - lo

    def summary(mask: np.ndarray) -> dict[str, Any]:
        return {"n": int(mask.sum()), "coverage": round(float(inside[mask].mean()), 4),
                "mean_width": round(float(width[mask].mean()), 2)}

    out = summary(np.ones(len(age), bool))
    labels = {"by_age_band": [age_band(a) for a in age],
              "by_view": [(v or "unknown").upper() for v in (views or [None] * len(age))],
              "by_sex": [(s or "unknown").upper() for s in (sexes or [None] * len(age))]}
    for key, values in labels.items():
        arr = np.asarray(values)
        out[key] = {name: summary(arr == name) for name in sorted(set(values))}
    return out


def calibrate_card(card: ModelCard, *, xray_age: np.ndarray, age_years: np.ndarray,
                   groups: Sequence[str], views: Sequence[str | None] | None = None,
                   sexes: Sequence[str | None] | None = None,
                   fold: Sequence[int] | None = None, coverage: float = 0.9,
                   seed: int = 0) -> ModelCard:
    """Fit the bias correction and the per-image interval on held-out predictions and
    record them, with the interval's out-of-fold rates (:func:`crossfit_interval`), in
    `card`, which is returned."""
    card.bias_correction = fit_bias_correction(xray_age=xray_age, age_years=age_years)
    cal = fit_interval(xray_age=xray_age, age_years=age_years, groups=groups, views=views,
                       coverage=coverage, seed=seed)
    rates = crossfit_interval(xray_age=xray_age, age_years=age_years, groups=groups,
                              views=views, sexes=sexes, fold=fold, coverage=coverage,
                              seed=seed)
    rates["method"] = ("nested: the interval (stretch and quantiles) refitted without each "
                       "fold of the held-out predictions and applied to it")
    card.conformal = replace(cal, empirical_coverage=rates["coverage"], rates=rates)
    return card


def _conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        raise ValueError(f"{n} calibration images are too few for {coverage:.0%} coverage")
    return float(np.sort(scores)[rank - 1])


def _fit_fixed(pred: np.ndarray, age: np.ndarray, view: np.ndarray, coverage: float,
               stretch: float) -> ConformalCalibration:
    mean = float(pred.mean())
    scores = np.abs(age - (mean + stretch * (pred - mean)))
    per_view = {v: _conformal_quantile(scores[view == v], coverage) for v in ("PA", "AP")
                if (view == v).sum() >= MIN_VIEW}
    return ConformalCalibration(coverage=coverage, quantile=_conformal_quantile(scores, coverage),
                                n=len(scores), centre_slope=stretch,
                                centre_mean=mean if stretch != 1.0 else 0.0,
                                view_quantiles=per_view)


def _crossfit(pred: np.ndarray, view: np.ndarray, fold: np.ndarray,
              fit: Callable[[np.ndarray], ConformalCalibration]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold interval bounds: ``fit(train_mask)`` for each fold, applied to it."""
    lower = np.empty_like(pred)
    upper = np.empty_like(pred)
    for k in np.unique(fold):
        test = fold == k
        cal = fit(~test)
        bounds = np.array([interval(cal, p, view=v) for p, v in
                           zip(pred[test], view[test], strict=True)])
        lower[test], upper[test] = bounds[:, 0], bounds[:, 1]
    return lower, upper


def _worst_band(inside: np.ndarray, age: np.ndarray, coverage: float) -> float:
    """Largest distance of a band's coverage (the mean of `inside`) from `coverage`."""
    bands = np.array([age_band(a) for a in age])
    gaps = [abs(float(inside[bands == b].mean()) - coverage) for b in set(bands.tolist())
            if (bands == b).sum() >= MIN_BAND]
    return max(gaps) if gaps else abs(float(inside.mean()) - coverage)


def _rows(xray_age: np.ndarray, age_years: np.ndarray, views: Sequence[str | None] | None,
          groups: Sequence[str], *labels: Sequence[Any] | np.ndarray) -> tuple[Any, ...]:
    """Finite rows of predictions and ages, with views (upper case, '' when unknown),
    groups and any further per-row labels."""
    pred, age = np.asarray(xray_age, np.float64), np.asarray(age_years, np.float64)
    n = len(pred)
    view_list = [None] * n if views is None else list(views)
    group_list = list(groups)
    if not (age.shape == pred.shape and len(view_list) == len(group_list) == n
            and all(len(lab) == n for lab in labels)):
        raise ValueError("predictions, ages, groups and views must have the same length")
    keep = np.isfinite(pred) & np.isfinite(age)
    view = np.array([(v or "").upper() for v in view_list], dtype=object)
    return (pred[keep], age[keep], view[keep], [g for g, k in zip(group_list, keep,
                                                                  strict=True) if k],
            *(np.asarray(lab, dtype=object)[keep] for lab in labels))


def _pair(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Float64 copies of equal-shaped arrays, keeping the rows finite in all of them."""
    values = [np.asarray(a, dtype=np.float64) for a in arrays]
    if any(v.shape != values[0].shape for v in values):
        raise ValueError("predictions, ages and sigmas must have the same shape")
    keep = np.logical_and.reduce([np.isfinite(v) for v in values])
    return tuple(v[keep] for v in values)
