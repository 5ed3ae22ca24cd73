"""Gap by condition: planted effects recovered at the stated coverage, no effect where none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xrayage.cohort import CohortDataError, GapByConditionFitter, adjust_pvalues, simulate_cohort

SEEDS = range(200)


def band(p: float, n: int = len(SEEDS), level: float = 0.999) -> tuple[float, float]:
    """Binomial tolerance band of an observed rate over `n` seeds when the true rate is `p`."""
    lo, hi = stats.binom.interval(level, n, p)
    return lo / n, hi / n


@pytest.fixture(scope="module")
def fits() -> list[GapByConditionFitter]:
    """One fit per seed; condition +1.0 y (confounded by age), null_condition no effect."""
    return [GapByConditionFitter(correction="none").fit(
        simulate_cohort(300, seed, condition_effect=1.0), ["condition", "null_condition"],
        gap_col="age_gap", sex_col="sex", covariates=["view"]) for seed in SEEDS]


def test_planted_effect_within_ci_at_stated_coverage(fits: list[GapByConditionFitter]) -> None:
    rows = pd.DataFrame([f.summary.loc["condition"] for f in fits])
    coverage = ((rows.coef_lower <= 1.0) & (rows.coef_upper >= 1.0)).mean()
    lo, hi = band(0.95)
    assert lo <= coverage <= hi, coverage
    assert rows.coef.mean() == pytest.approx(1.0, abs=0.15)  # unbiased across seeds
    # The unadjusted difference is confounded by age (raw gap falls with age).
    assert rows.difference.mean() < 0


def test_no_effect_where_none_planted(fits: list[GapByConditionFitter]) -> None:
    rows = pd.DataFrame([f.summary.loc["null_condition"] for f in fits])
    false_positive = (rows.p < 0.05).mean()
    lo, hi = band(0.05)
    assert lo <= false_positive <= hi, false_positive
    coverage = ((rows.coef_lower <= 0) & (rows.coef_upper >= 0)).mean()
    assert band(0.95)[0] <= coverage


def test_group_means_cover_their_truth() -> None:
    """The mean-gap CI of each group covers the simulated population mean at ~95%."""
    big = simulate_cohort(200_000, 10_000, condition_effect=1.0)
    truth = big.groupby("condition").age_gap.mean()
    hits = np.array([
        [r.mean_with_lower <= truth[1] <= r.mean_with_upper,
         r.mean_without_lower <= truth[0] <= r.mean_without_upper]
        for r in (GapByConditionFitter().fit(simulate_cohort(300, s, 1.0), ["condition"])
                  .summary.loc["condition"] for s in range(100))])
    assert (band(0.95, 100)[0] <= hits.mean(axis=0)).all(), hits.mean(axis=0)


def test_adjust_pvalues_match_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.2, 12)
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        expected = multitest.multipletests(p, method=theirs)[1]
        np.testing.assert_allclose(adjust_pvalues(p, ours), expected)


def test_holm_controls_family_wise_error() -> None:
    """Five null conditions: the chance of any Holm-significant one stays near or below 5%."""
    n, k = 300, 5
    any_hit = []
    for seed in range(100):
        df = simulate_cohort(n, seed)
        rng = np.random.default_rng(seed + 1000)
        names = [f"c{i}" for i in range(k)]
        df[names] = (rng.random((n, k)) < 0.3).astype(int)
        any_hit.append(GapByConditionFitter().fit(df, names).summary.significant.any())
    assert np.mean(any_hit) <= band(0.05, 100)[1]


def test_reference_group_and_cluster_errors() -> None:
    df = simulate_cohort(400, 1, condition_effect=1.0)
    df["healthy"] = 1 - df.condition
    df.loc[:50, "healthy"] = 0  # neither: left out of the comparison
    f = GapByConditionFitter(cluster_col="patient_id").fit(
        df, ["condition"], sex_col="sex", reference_col="healthy")
    row = f.summary.loc["condition"]
    assert row.n_with + row.n_without == len(df) - int(((df.condition == 0)
                                                        & (df.healthy == 0)).sum())
    assert row.n_dropped == 0 and f.reference_ == "healthy"


def test_condition_in_one_patient_is_reported_not_tested() -> None:
    df = simulate_cohort(200, 4)
    df["one_patient"] = 0
    df.loc[:2, "one_patient"] = 1
    df.loc[:2, "patient_id"] = "p_same"
    f = GapByConditionFitter(cluster_col="patient_id").fit(df, ["one_patient", "condition"])
    row = f.summary.loc["one_patient"]
    assert np.isfinite(row.coef) and np.isnan(row.p) and np.isnan(row.coef_lower)
    assert not row.tested and row.patients_with == 1 and f.untested_ == ["one_patient"]
    assert "not tested" in " ".join(f.warnings_) and "one_patient (1)" in " ".join(f.warnings_)
    # the untested condition is not in the Holm family: the tested one keeps its p
    assert f.summary.loc["condition", "p_adjusted"] == f.summary.loc["condition", "p"]


def test_min_group_threshold_and_missing_warned() -> None:
    df = simulate_cohort(200, 2)
    df["rare"] = 0
    df.loc[:4, "rare"] = 1
    df.loc[10:19, "age_gap"] = np.nan
    f = GapByConditionFitter(min_group=6).fit(df, ["rare"])
    text = " ".join(f.warnings_)
    assert "rare (5)" in text and "10 of 200 rows dropped" in text
    g = GapByConditionFitter(min_group=5).fit(df, ["rare"])
    assert g.summary.loc["rare", "tested"] and np.isfinite(g.summary.loc["rare", "p"])


def test_condition_also_a_covariate_is_an_error() -> None:
    df = simulate_cohort(300, 0, condition_effect=1.0)
    with pytest.raises(CohortDataError, match="both a condition and a covariate"):
        GapByConditionFitter().fit(df, ["condition"], covariates=["condition"])
    with pytest.raises(CohortDataError, match="twice"):
        GapByConditionFitter().fit(df, ["condition", "condition"])
    with pytest.raises(CohortDataError, match="the age column"):
        GapByConditionFitter().fit(df, ["age_years"])


def test_joint_model_adjusts_conditions_for_each_other() -> None:
    df = simulate_cohort(3000, 5, condition_effect=1.0)
    # a marker that travels with the condition but has no effect of its own
    rng = np.random.default_rng(0)
    df["marker"] = np.where(rng.random(len(df)) < 0.8, df.condition, 1 - df.condition)
    sep = GapByConditionFitter().fit(df, ["condition", "marker"], sex_col="sex")
    joint = GapByConditionFitter(joint=True).fit(df, ["condition", "marker"], sex_col="sex")
    assert sep.summary.loc["marker", "coef"] > 0.3  # confounded by the condition
    assert abs(joint.summary.loc["marker", "coef"]) < 0.3
    assert joint.summary.loc["condition", "coef"] == pytest.approx(1.0, abs=0.4)
    with pytest.raises(CohortDataError, match="--joint"):
        GapByConditionFitter(joint=True).fit(df, ["condition"], reference_col="marker")


def test_logistic_and_subgroups() -> None:
    df = simulate_cohort(3000, 6, condition_effect=2.0)
    f = GapByConditionFitter(cluster_col="patient_id").fit(
        df, ["condition", "null_condition"], sex_col="sex", by="sex")
    lo = f.logistic_
    assert lo.loc["condition", "odds_ratio_per_year"] > 1 and lo.loc["condition", "p"] < 0.05
    assert lo.loc["null_condition", "or_lower"] < 1 < lo.loc["null_condition", "or_upper"]
    sub = f.subgroups_.set_index(["condition", "level"])
    assert set(sub.index.get_level_values("level")) == {0, 1}
    assert 0 < sub.loc[("condition", 0), "p_interaction"] <= 1
    assert sub.loc[("condition", 1), "coef"] == pytest.approx(2.0, abs=1.0)


@pytest.mark.parametrize(("column", "message"), [("missing", "no column 'missing'"),
                                                 ("view", "not binary")])
def test_bad_condition_column(column: str, message: str) -> None:
    with pytest.raises(CohortDataError, match=message):
        GapByConditionFitter().fit(simulate_cohort(50, 0), [column])


def test_plot_and_print(capsys: pytest.CaptureFixture[str]) -> None:
    f = GapByConditionFitter().fit(simulate_cohort(300, 0, 1.0), ["condition", "null_condition"],
                                   sex_col="sex")
    f.print_summary()
    assert "null_condition" in capsys.readouterr().out
    ax = f.plot()
    assert len(ax.get_yticklabels()) == 2
