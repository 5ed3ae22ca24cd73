"""Agreement metrics between X-ray age and chronological age (numpy only).

Every function that takes both ages takes them by keyword (``age_years=``, ``xray_age=``),
so they cannot be swapped silently.

Examples
--------
>>> m = age_metrics(age_years=[30.0, 50.0, 70.0], xray_age=[32.0, 49.0, 69.0],
...                 train_median=50.0)
>>> round(m["mae"], 3), round(m["bias"], 3), round(m["mae_no_skill"], 3)
(1.333, 0.0, 13.333)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

AGE_BANDS: tuple[float, ...] = (0, 18, 40, 60, 80, 200)
"""Edges of the age bands in years: <18, 18-39, 40-59, 60-79, 80+."""


def icc1(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(1): one-way random-effects, single-measure intraclass correlation of two ratings.

    ``(MSB - MSW) / (MSB + MSW)`` for k = 2 ratings per subject (Shrout & Fleiss 1979),
    so unlike Pearson r it is lowered by a systematic bias.
    """
    x = np.stack([np.asarray(a, float), np.asarray(b, float)], axis=1)
    n, k = x.shape
    if n < 2:
        return math.nan
    grand = x.mean()
    msb = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    msw = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum() / (n * (k - 1))
    denom = msb + (k - 1) * msw
    return float((msb - msw) / denom) if denom > 0 else math.nan


def age_metrics(
    *,
    age_years: Sequence[float] | np.ndarray,
    xray_age: Sequence[float] | np.ndarray,
    train_median: float | None = None,
) -> dict[str, Any]:
    """Compare predictions with chronological ages.

    Parameters
    ----------
    age_years : array-like, shape (n,)
        Chronological ages in years.
    xray_age : array-like, shape (n,)
        Predicted X-ray ages in years.
    train_median : float, optional
        Median age of the training data: the no-skill predictor. If None, the median of
        `age_years` is used (optimistic: it peeks at the test data).

    Returns
    -------
    dict
        ``n, mae, rmse, bias`` (mean of prediction minus age), ``r`` (Pearson), ``r2``
        (``1 - SSE/SST`` against the test mean), ``icc`` (ICC(1)), ``age_mean, age_sd``,
        ``mae_no_skill`` and ``no_skill_median``. NaN where undefined (n < 2, zero variance).
    """
    y = np.asarray(age_years, dtype=np.float64).reshape(-1)
    p = np.asarray(xray_age, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"age_years {y.shape} and xray_age {p.shape} differ in length")
    n = len(y)
    nan = math.nan
    if n == 0:
        return {"n": 0, "mae": nan, "rmse": nan, "bias": nan, "r": nan, "r2": nan, "icc": nan,
                "age_mean": nan, "age_sd": nan, "mae_no_skill": nan, "no_skill_median": nan}
    err = p - y
    median = float(np.median(y)) if train_median is None else float(train_median)
    sst = float(((y - y.mean()) ** 2).sum())
    r = nan
    if n > 1 and y.std() > 0 and p.std() > 0:
        r = float(np.corrcoef(y, p)[0, 1])
    return {
        "n": n,
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "bias": float(err.mean()),
        "r": r,
        "r2": float(1 - (err**2).sum() / sst) if sst > 0 else nan,
        "icc": icc1(y, p),
        "age_mean": float(y.mean()),
        "age_sd": float(y.std(ddof=1)) if n > 1 else nan,
        "mae_no_skill": float(np.abs(y - median).mean()),
        "no_skill_median": median,
    }


def age_band(age: float, edges: Sequence[float] = AGE_BANDS) -> str:
    """Label of the band holding `age`, e.g. ``"40-59"`` or ``"80+"``."""
    for lo, hi in itertools.pairwise(edges):
        if lo <= age < hi:
            return f"{lo:g}+" if hi >= 150 else (f"<{hi:g}" if lo <= 0 else f"{lo:g}-{hi - 1:g}")
    return "other"


def grouped_metrics(
    *,
    age_years: Sequence[float] | np.ndarray,
    xray_age: Sequence[float] | np.ndarray,
    groups: dict[str, Sequence[str | None]],
    train_median: float | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`age_metrics` within each level of each grouping.

    Parameters
    ----------
    age_years, xray_age : array-like, shape (n,)
    groups : dict
        Grouping name (``"sex"``) -> one label per sample (``None`` and ``""`` are
        reported as ``"unknown"``).
    train_median : float, optional

    Returns
    -------
    dict
        ``{grouping: {level: metrics}}``.
    """
    y = np.asarray(age_years, dtype=np.float64)
    p = np.asarray(xray_age, dtype=np.float64)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, labels in groups.items():
        lab = np.asarray(["unknown" if v is None or str(v) == "" else str(v) for v in labels])
        if len(lab) != len(y):
            raise ValueError(f"group {name!r} has {len(lab)} labels for {len(y)} samples")
        out[name] = {
            level: age_metrics(age_years=y[lab == level], xray_age=p[lab == level],
                               train_median=train_median)
            for level in sorted(set(lab.tolist()))
        }
    return out


def bootstrap_ci(
    *,
    age_years: Sequence[float] | np.ndarray,
    xray_age: Sequence[float] | np.ndarray,
    clusters: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap intervals of MAE and Pearson r.

    Resamples clusters (patients) with replacement when given, so several images of
    one patient do not narrow the interval.

    Parameters
    ----------
    age_years, xray_age : array-like, shape (n,)
        Chronological and predicted ages, in years.
    clusters : sequence of str, optional
        Cluster (patient) of each sample; default each sample its own.
    n_boot : int
        Bootstrap resamples.
    seed : int

    Returns
    -------
    dict
        ``{"mae": (low, high), "r": (low, high)}``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 200)
    >>> ci = bootstrap_ci(age_years=age, xray_age=age + rng.normal(0, 5, 200))
    >>> bool(ci["mae"][0] < 4.0 < ci["mae"][1])
    True
    """
    y = np.asarray(age_years, dtype=float)
    p = np.asarray(xray_age, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"age_years {y.shape} and xray_age {p.shape} differ in length")
    labels = np.asarray(clusters if clusters is not None else np.arange(len(y)).astype(str))
    names, index = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(index == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    maes, rs = [], []
    for _ in range(n_boot):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        maes.append(np.abs(p[rows] - y[rows]).mean())
        if np.ptp(y[rows]) > 0 and np.ptp(p[rows]) > 0:
            rs.append(np.corrcoef(y[rows], p[rows])[0, 1])
    def pct(v: list[float]) -> tuple[float, float]:
        lo, hi = np.percentile(v, [2.5, 97.5]) if v else (math.nan, math.nan)
        return float(lo), float(hi)

    return {"mae": pct(maes), "r": pct(rs)}
