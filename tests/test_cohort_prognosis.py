"""Prognosis: planted HR per year of gap recovered, none found where none, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xrayage.cohort import CohortDataError, GapCoxFitter, simulate_cohort

SEEDS = range(200)
HR = 1.02


def band(p: float, n: int = len(SEEDS), level: float = 0.999) -> tuple[float, float]:
    lo, hi = stats.binom.interval(level, n, p)
    return lo / n, hi / n


def _fits(hr: float) -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        f = GapCoxFitter().fit(simulate_cohort(300, seed, hr_per_year=hr), "time", "event",
                               sex_col="sex", diagnostics=False)
        rows.append((f.hazard_ratio_, f.hazard_ratio_lower_, f.hazard_ratio_upper_, f.p_value_))
    return pd.DataFrame(rows, columns=["hr", "lower", "upper", "p"])


@pytest.mark.slow
def test_planted_hazard_ratio_within_ci_at_stated_coverage() -> None:
    fits = _fits(HR)
    coverage = ((fits.lower <= HR) & (fits.upper >= HR)).mean()
    lo, hi = band(0.95)
    assert lo <= coverage <= hi, coverage
    assert math.exp(np.log(fits.hr).mean()) == pytest.approx(HR, abs=0.005)


@pytest.mark.slow
def test_no_hazard_where_none_planted() -> None:
    fits = _fits(1.0)
    lo, hi = band(0.05)
    assert lo <= (fits.p < 0.05).mean() <= hi


def test_diagnostics_on_a_large_cohort() -> None:
    df = simulate_cohort(3000, 7, hr_per_year=1.05)
    f = GapCoxFitter(n_bootstrap=50).fit(df, "time", "event", gap_col="age_gap_corrected",
                                         sex_col="sex", covariates=["view"])
    assert f.hazard_ratio_lower_ < 1.05 < f.hazard_ratio_upper_ and f.p_value_ < 1e-6
    assert set(f.ph_test_.index) == {"gap", "age", "sex_male", "view_PA"}
    assert f.c_index_["age+gap"] > f.c_index_["age"]
    assert f.c_index_gain_ci_[0] < f.c_index_gain_ < f.c_index_gain_ci_[1]
    assert len(f.km_) == 3 and f.logrank_p_ < 0.05
    assert f.at_risk_.iloc[0].sum() == len(df)
    assert not [w for w in f.warnings_ if "proportional hazards" in w]


def test_non_proportional_hazards_are_flagged() -> None:
    """The gap raises the hazard early and lowers it late: the PH test must object."""
    rng = np.random.default_rng(3)
    df = simulate_cohort(3000, 3)
    early = rng.exponential(1, len(df)) / np.exp(-2 + 0.3 * df.age_gap.clip(-10, 10))
    late = 1 + rng.exponential(1, len(df)) / np.exp(-2 - 0.3 * df.age_gap.clip(-10, 10))
    t = np.where(early < 1, early, late)
    df["time"], df["event"] = np.minimum(t, 4), (t < 4).astype(int)
    f = GapCoxFitter(n_bootstrap=0, km_groups="sign").fit(df, "time", "event")
    assert any("proportional hazards doubtful for gap" in w for w in f.warnings_)
    assert list(f.km_) == ["gap ≤ 0", "gap > 0"]


def test_too_few_events() -> None:
    df = simulate_cohort(100, 0)
    df["event"] = 0
    df.loc[:3, "event"] = 1
    with pytest.raises(CohortDataError, match="only 4 events"):
        GapCoxFitter().fit(df, "time", "event")


@pytest.mark.parametrize(("change", "message"), [
    ({"time": -1.0}, "times ≤ 0"), ({"event": "dead"}, "not binary")])
def test_bad_survival_columns(change: dict[str, object], message: str) -> None:
    df = simulate_cohort(100, 0)
    for col, value in change.items():
        df[col] = df[col].astype(object)
        df.loc[0, col] = value
    with pytest.raises(CohortDataError, match=message):
        GapCoxFitter().fit(df, "time", "event")


def test_plot_has_numbers_at_risk() -> None:
    f = GapCoxFitter(n_bootstrap=0).fit(simulate_cohort(400, 1, hr_per_year=1.05), "time",
                                        "event", sex_col="sex")
    ax = f.plot()
    texts = [t.get_text() for a in ax.figure.axes for t in a.get_xticklabels()]
    assert any("\n" in t for t in texts)  # the at-risk rows under the time axis
    assert "log-rank" in ax.get_title()


def test_patient_level_with_two_films_per_patient() -> None:
    df = simulate_cohort(1200, 8, hr_per_year=1.05, films_per_patient=2)
    df = df.sample(frac=1.0, random_state=0)  # films out of order: --film-order decides
    f = GapCoxFitter(cluster_col="patient_id", n_bootstrap=0).fit(
        df, "time", "event", sex_col="sex", order_col="film")
    patients = df[df.film == 0]
    assert f.n_ == f.n_rows_ == 600 and f.n_events_ == int(patients.event.sum())
    assert f.film_choice_ == "first film per patient by 'film'"
    assert f.at_risk_.iloc[0].sum() == 600  # Kaplan–Meier on patients
    # the same as fitting the first films alone
    g = GapCoxFitter(n_bootstrap=0, cv_folds=0).fit(patients, "time", "event", sex_col="sex",
                                                    diagnostics=False)
    assert f.hazard_ratio_ == pytest.approx(g.hazard_ratio_)
    a = GapCoxFitter(cluster_col="patient_id", films="all").fit(
        df, "time", "event", sex_col="sex", diagnostics=False)
    assert a.n_ == 600 and a.n_rows_ == 1200 and a.robust_
    assert a.n_events_ == f.n_events_  # events counted once per patient


def test_strata_interaction_and_cross_validated_c_index() -> None:
    df = simulate_cohort(2000, 9, hr_per_year=1.05)
    f = GapCoxFitter(n_bootstrap=30).fit(df, "time", "event", sex_col="sex", strata=["view"],
                                         by="sex")
    assert "view_PA" not in f.summary.index and f.strata_ == ["_s0"]
    inter = f.interaction_
    assert inter is not None and 0 < inter["p_interaction"] <= 1
    for level in ("level_0", "level_1"):
        assert 1.0 < inter[level]["lower"] < inter[level]["hr"] < inter[level]["upper"] < 1.12
    cv = f.c_index_cv_
    assert cv["folds"] == 5 and cv["gain_ci"][0] < cv["gain"] < cv["gain_ci"][1]
    assert f.c_index_gain_ == cv["gain"]
    assert cv["age+gap"] <= f.c_index_["age+gap"] + 0.01  # out-of-fold is not optimistic


def test_duplicate_terms_are_errors() -> None:
    df = simulate_cohort(200, 0)
    with pytest.raises(CohortDataError, match="twice"):
        GapCoxFitter().fit(df, "time", "event", covariates=["view", "view"])
    with pytest.raises(CohortDataError, match="survival time or event"):
        GapCoxFitter().fit(df, "time", "event", covariates=["event"])
