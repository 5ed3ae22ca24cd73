"""Pace of X-ray ageing: planted pace and condition effect recovered; dates and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xrayage.cohort import CohortDataError
from xrayage.cohort.longitudinal import PaceFitter, years_since_first
from xrayage.cohort.simulate import simulate_serial_films


@pytest.fixture(scope="module")
def fitted() -> PaceFitter:
    df = simulate_serial_films(600, seed=1, pace=0.8, pace_effect=0.4)
    return PaceFitter().fit(df, "patient_id", "study_date", sex_col="sex",
                            conditions=["condition", "null_condition"])


def test_planted_pace_and_effect_within_ci(fitted: PaceFitter) -> None:
    c = fitted.conditions_
    assert c.loc["condition", "pace_without_lower"] < 0.8 < c.loc["condition",
                                                                  "pace_without_upper"]
    assert c.loc["condition", "lower"] < 0.4 < c.loc["condition", "upper"]
    assert c.loc["condition", "p"] < 0.001
    assert c.loc["null_condition", "lower"] < 0 < c.loc["null_condition", "upper"]
    assert fitted.n_serial_ == 600 and fitted.n_films_ == 1800
    assert 0 <= fitted.random_["sd_pace"] < 0.6  # weakly identified with 3 films per patient
    assert len(fitted.patient_pace_) == 600


def test_plots(fitted: PaceFitter) -> None:
    ax = fitted.plot_spaghetti(max_patients=20)
    assert len(ax.lines) == 21 and "pace" in ax.get_legend().get_texts()[0].get_text()
    assert fitted.plot_pace().get_xlabel().startswith("pace of X-ray ageing")


def test_times_from_dates_or_years() -> None:
    pid = pd.Series(["a", "a", "b", "b"])
    years = years_since_first(pd.Series([2.0, 5.5, 1.0, 1.0]), pid)
    assert years.tolist() == [0.0, 3.5, 0.0, 0.0]
    with pytest.raises(CohortDataError, match="neither dates nor numbers"):
        years_since_first(pd.Series(["x", "y", "z", "w"]), pid)


def test_too_few_serial_patients() -> None:
    df = simulate_serial_films(30, seed=0).groupby("patient_id").head(1)
    with pytest.raises(CohortDataError, match="two or more dated films"):
        PaceFitter().fit(df, "patient_id", "study_date")
    assert np.isfinite(df.xray_age).all()
