"""Synthetic cohorts with planted effects, for tests, docs and power checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..extras import require
from ._deps import FEATURE


def simulate_cohort(n: int, seed: int, condition_effect: float = 0.0, hr_per_year: float = 1.0,
                    follow_up: float = 5.0) -> Any:
    """A cohort shaped like ``xrayage predict`` output joined to a clinical table.

    The model regresses to the mean (``xray_age = 0.8 age + 11 + noise``, noise sd 5 y), so
    the raw gap falls with age; the condition is commoner in older patients, so an
    unadjusted comparison is confounded by age and only the age-adjusted one recovers
    `condition_effect`. Men's gap is 0.5 y higher. The hazard is exponential with
    ``log h = -3 + 0.04 (age - 55) + 0.2 male + log(hr_per_year) gap`` (time in years),
    censored at `follow_up` years and by uniform drop-out.

    Parameters
    ----------
    n : int
        Patients (one image each).
    seed : int
        Seed of the generator (nothing global is touched).
    condition_effect : float
        Years added to the gap of patients with the condition.
    hr_per_year : float
        Hazard ratio per year of (raw) gap, conditional on age and sex.
    follow_up : float
        Administrative censoring time, years.

    Returns
    -------
    DataFrame
        ``path, patient_id, xray_age, age_years, age_gap, age_gap_corrected, sex,
        view, condition, null_condition, time, event``.
    """
    pd = require("pandas", "analysis", FEATURE)
    rng = np.random.default_rng(seed)
    age = rng.uniform(30, 85, n)
    male = rng.random(n) < 0.5
    condition = rng.random(n) < 1 / (1 + np.exp(-(-1.0 + 0.05 * (age - 55))))
    view_ap = rng.random(n) < 0.4
    xray = (0.8 * age + 11 + 0.5 * male + condition_effect * condition + 1.5 * view_ap
            + rng.normal(0, 5, n))
    gap = xray - age
    slope, intercept = np.polyfit(age, xray, 1)
    lp = -3 + 0.04 * (age - 55) + 0.2 * male + np.log(hr_per_year) * gap
    t_event = rng.exponential(1.0, n) / np.exp(lp)
    t_cens = np.minimum(rng.uniform(0.5, 2 * follow_up, n), follow_up)
    return pd.DataFrame({
        "path": [f"img{i:05d}.png" for i in range(n)],
        "patient_id": [f"p{i:05d}" for i in range(n)],
        "xray_age": xray, "age_years": age, "age_gap": gap,
        "age_gap_corrected": xray - (slope * age + intercept),
        "sex": np.where(male, "M", "F"), "view": np.where(view_ap, "AP", "PA"),
        "condition": condition.astype(int), "null_condition": (rng.random(n) < 0.3).astype(int),
        "time": np.minimum(t_event, t_cens), "event": (t_event <= t_cens).astype(int),
    })
