"""Agreement of X-ray age with chronological age: the training issue's metrics, and plots.

The numbers come from :mod:`xrayage.metrics` (shared with ``xrayage evaluate``); this
module adds the per-group breakdown the report shows; the two standard plots are
:func:`xrayage.plots.plot_scatter` and :func:`~xrayage.plots.plot_bland_altman`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CohortDataError
from ..metrics import age_band, age_metrics, grouped_metrics
from ..plots import plot_bland_altman, plot_scatter


def age_accuracy(*, xray_age: Any, age_years: Any, sex: Any | None = None,
                 train_median: float | None = None) -> dict[str, Any]:
    """Agreement metrics of predicted against chronological age, in years.

    Parameters
    ----------
    xray_age, age_years : array-like, shape (n,)
        Paired ages (by keyword); pairs with a missing value are dropped.
    sex : array-like, optional
        Labels for a by-sex breakdown.
    train_median : float, optional
        Training median age (the no-skill predictor); default this cohort's median.

    Returns
    -------
    dict
        :func:`xrayage.metrics.age_metrics` keys (``n, mae, rmse, bias, r, r2, icc,
        mae_no_skill, ...``) plus ``by_group`` (by age band and, if given, by sex).

    Examples
    --------
    >>> m = age_accuracy(xray_age=[30, 50, 70], age_years=[32, 48, 70])
    >>> m["n"], round(m["mae"], 3), m["bias"]
    (3, 1.333, 0.0)
    """
    pred = np.asarray(xray_age, dtype=float)
    age = np.asarray(age_years, dtype=float)
    keep = np.isfinite(pred) & np.isfinite(age)
    if keep.sum() < 3:
        raise CohortDataError(f"accuracy needs at least 3 images with both ages, "
                              f"got {int(keep.sum())}")
    groups: dict[str, Sequence[str | None]] = {"age_band": [age_band(a) for a in age[keep]]}
    if sex is not None:
        groups["sex"] = [None if v is None or v != v else str(v)
                         for v in np.asarray(sex, dtype=object)[keep]]
    out = age_metrics(age_years=age[keep], xray_age=pred[keep], train_median=train_median)
    out["by_group"] = grouped_metrics(age_years=age[keep], xray_age=pred[keep], groups=groups,
                                      train_median=train_median)
    return out


__all__ = ["age_accuracy", "plot_bland_altman", "plot_scatter"]
