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
