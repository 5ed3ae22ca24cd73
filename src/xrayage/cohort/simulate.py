"""Synthetic cohorts with planted effects, for tests, docs and power checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..extras import require
from ._deps import FEATURE


def simulate_cohort(n: int, seed: int, condition_effect: float = 0.0, hr_per_year: float = 1.0,
                    follow_up: float = 5.0, films_per_patient: int = 1,
                    patient_sd: float = 3.5) -> Any:
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
    films_per_patient : int
        Films per patient (``n`` is then the number of films, ``n // films_per_patient``
        patients). Above 1, the gap's noise is split into a patient effect (sd
        `patient_sd`) shared by the patient's films and a film effect (total sd still
        5 y); age, sex, condition and outcome are the patient's; the hazard depends on the
        first film's gap, and every row carries the time from the first film. Films
        are numbered by ``film`` (0 = first) and each is read in its own view.
    patient_sd : float
        See `films_per_patient`.

    Returns
    -------
    DataFrame
        ``path, patient_id, xray_age, age_years, age_gap, age_gap_corrected, sex,
        view, condition, null_condition, time, event`` (and ``film`` with several films
        per patient).
    """
    pd = require("pandas", "analysis", FEATURE)
    if films_per_patient > 1:
        return _simulate_films(n, seed, condition_effect, hr_per_year, follow_up,
                               films_per_patient, patient_sd)
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


def _simulate_films(n: int, seed: int, condition_effect: float, hr_per_year: float,
                    follow_up: float, k: int, patient_sd: float) -> Any:
    """:func:`simulate_cohort` with `k` films per patient (see there)."""
    pd = require("pandas", "analysis", FEATURE)
    rng = np.random.default_rng(seed)
    m = n // k
    age = rng.uniform(30, 85, m)
    male = rng.random(m) < 0.5
    condition = rng.random(m) < 1 / (1 + np.exp(-(-1.0 + 0.05 * (age - 55))))
    null = rng.random(m) < 0.3
    u = rng.normal(0, patient_sd, m)
    film_sd = float(np.sqrt(max(25.0 - patient_sd**2, 1e-6)))
    pid = np.repeat(np.arange(m), k)
    view_ap = rng.random(m * k) < 0.4
    xray = (0.8 * age[pid] + 11 + 0.5 * male[pid] + condition_effect * condition[pid]
            + 1.5 * view_ap + u[pid] + rng.normal(0, film_sd, m * k))
    gap = xray - age[pid]
    slope, intercept = np.polyfit(age[pid], xray, 1)
    first_gap = gap[::k]
    lp = -3 + 0.04 * (age - 55) + 0.2 * male + np.log(hr_per_year) * first_gap
    t_event = rng.exponential(1.0, m) / np.exp(lp)
    t_cens = np.minimum(rng.uniform(0.5, 2 * follow_up, m), follow_up)
    return pd.DataFrame({
        "path": [f"img{i:05d}.png" for i in range(m * k)],
        "patient_id": [f"p{i:05d}" for i in pid], "film": np.tile(np.arange(k), m),
        "xray_age": xray, "age_years": age[pid], "age_gap": gap,
        "age_gap_corrected": xray - (slope * age[pid] + intercept),
        "sex": np.where(male[pid], "M", "F"), "view": np.where(view_ap, "AP", "PA"),
        "condition": condition[pid].astype(int), "null_condition": null[pid].astype(int),
        "time": np.minimum(t_event, t_cens)[pid], "event": (t_event <= t_cens)[pid].astype(int),
    })


def simulate_serial_films(n_patients: int, seed: int, films: int = 3, pace: float = 1.0,
                          pace_effect: float = 0.0, pace_sd: float = 0.2,
                          span_years: float = 6.0) -> Any:
    """Serial films with a planted pace of X-ray ageing, for :class:`~.longitudinal.PaceFitter`.

    Patient ``i`` has films at times ``t`` since the first film (0, then uniform over
    `span_years`, sorted), and X-ray age ``a_i + b_i t + e`` with ``a_i = 0.8 age0 + 11 +
    0.5 male + u_i`` (``u`` sd 4 y), film noise sd 3 y, and a personal pace ``b_i = pace +
    pace_effect * condition + N(0, pace_sd)`` X-ray years per calendar year. The condition
    (30%) is commoner with age; ``null_condition`` (30%) has no effect.

    Returns
    -------
    DataFrame
        ``path, patient_id, study_date, years_since_first, age_years, xray_age, age_gap,
        sex, condition, null_condition``; ``age_years`` is the age on the film's date.
    """
    pd = require("pandas", "analysis", FEATURE)
    rng = np.random.default_rng(seed)
    age0 = rng.uniform(30, 80, n_patients)
    male = rng.random(n_patients) < 0.5
    condition = rng.random(n_patients) < 1 / (1 + np.exp(-(-0.85 + 0.03 * (age0 - 55))))
    null = rng.random(n_patients) < 0.3
    t = np.column_stack([np.zeros(n_patients),
                         np.sort(rng.uniform(0.2, span_years, (n_patients, films - 1)), axis=1)])
    a = 0.8 * age0 + 11 + 0.5 * male + rng.normal(0, 4, n_patients)
    b = pace + pace_effect * condition + rng.normal(0, pace_sd, n_patients)
    xray = a[:, None] + b[:, None] * t + rng.normal(0, 3, t.shape)
    pid = np.repeat(np.arange(n_patients), films)
    tt = t.ravel()
    age = age0[pid] + tt
    start = np.datetime64("2010-01-01") + rng.integers(0, 3650, n_patients).astype("timedelta64[D]")
    dates = start[pid] + np.round(tt * 365.25).astype("timedelta64[D]")
    return pd.DataFrame({
        "path": [f"img{i:06d}.png" for i in range(len(pid))],
        "patient_id": [f"p{i:05d}" for i in pid], "study_date": dates.astype(str),
        "years_since_first": tt, "age_years": age, "xray_age": xray.ravel(),
        "age_gap": xray.ravel() - age, "sex": np.where(male[pid], "M", "F"),
        "condition": condition[pid].astype(int), "null_condition": null[pid].astype(int),
    })
