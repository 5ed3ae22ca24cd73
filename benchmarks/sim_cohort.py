"""Coverage and false-positive rates of `xrayage analyze`'s estimators, by simulation.

Every scenario uses n = 1,500 films (``--n``) and the public fitters that
:func:`xrayage.cohort.analyze_cohort` (and so ``xrayage analyze``) calls, with the
settings the CLI passes; ``--cli-check K`` also runs the first K repetitions of each
gap scenario through ``analyze_cohort`` on CSV files and checks that the numbers agree.

Scenarios (each repetition draws a fresh cohort):

``gap``
    :func:`~xrayage.cohort.simulate_cohort` with two films per patient (750 patients; the
    gap shares a patient effect, sd 3.5 of 5 y). A planted condition (+1.0 y) and a null
    condition each hold exactly M images (M = 4, 10, 50), chosen with probability rising
    with age (confounding). ``patient`` design: the condition is the patient's (all films
    of M/2 patients); ``film`` design: a finding on one film each of M patients. Fitted by
    :class:`~xrayage.cohort.GapByConditionFitter` with ``cluster_col='patient_id'`` (CR2,
    Satterthwaite df), ``min_group=2`` so that even the smallest groups are tested (the
    CLI's default ``--min-group 5`` would report them untested). For comparison, the old
    inference (statsmodels' CR1 clustered errors, normal reference) on the same data.
``cox``
    Two films per patient (750 patients), hazard driven by the first film's gap, HR 1.02
    per year (coverage) or 1.00 (false positives); :class:`~xrayage.cohort.GapCoxFitter`
    with ``cluster_col`` and the default ``films='first'`` (patient level), plus the
    patient-level log-rank and PH tests under the null, and ``films='all'`` (robust
    errors) under the null.
``pace``
    :func:`~xrayage.cohort.simulate.simulate_serial_films`, 500 patients x 3 films over
    up to 6 years, pace 1.0 and +0.3 with the condition; a null condition.
    :class:`~xrayage.cohort.longitudinal.PaceFitter`: coverage of the pace without the
    condition (1.0) and of the difference (0.3), false positives of the null difference.

Usage::

    nice python benchmarks/sim_cohort.py --reps 200 [--scenarios gap cox pace] [--seed 0]

It prints one table (rate, its binomial 95% interval, and the target band) and exits 1
if a rate leaves its band. Not part of the test suite (about an hour on 2 CPU cores at
200 repetitions); ``tests/test_cohort_sim.py`` runs a few repetitions.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from xrayage.cohort import GapByConditionFitter, GapCoxFitter, simulate_cohort
from xrayage.cohort.longitudinal import PaceFitter
from xrayage.cohort.simulate import simulate_serial_films

SIZES = (4, 10, 50)
COVERAGE_BAND = (0.93, 0.97)
FPR_BAND = (0.03, 0.07)
EFFECT, HR, PACE, PACE_EFFECT = 1.0, 1.02, 1.0, 0.3


def plant(df: pd.DataFrame, m: int, design: str, rng: np.random.Generator) -> pd.Series:
    """A 0/1 column held by exactly `m` films, commoner in older patients."""
    patients = df.groupby("patient_id", sort=False)["age_years"].first()
    w = np.exp(0.04 * (patients.to_numpy() - 55))
    w /= w.sum()
    out = pd.Series(0, index=df.index)
    if design == "patient":
        chosen = rng.choice(patients.index.to_numpy(), size=m // 2, replace=False, p=w)
        out[df["patient_id"].isin(chosen)] = 1
    else:
        chosen = rng.choice(patients.index.to_numpy(), size=m, replace=False, p=w)
        rows = df[df["patient_id"].isin(chosen)].groupby("patient_id").sample(
            1, random_state=int(rng.integers(2**31))).index
        out[rows] = 1
    return out


def gap_cohort(n: int, seed: int, m: int, design: str) -> pd.DataFrame:
    """Two films per patient; `planted` (+EFFECT y) and `null` each on exactly m films."""
    rng = np.random.default_rng([seed, m, design == "film"])
    df = simulate_cohort(n, seed, films_per_patient=2)
    df["planted"] = plant(df, m, design, rng)
    df["null"] = plant(df[df["planted"] == 0], m, design, rng).reindex(df.index, fill_value=0)
    df["age_gap"] += EFFECT * df["planted"]
    df["xray_age"] += EFFECT * df["planted"]
    return df


def cr1_p(df: pd.DataFrame, cond: str) -> float:
    """The old inference: statsmodels clustered (CR1) errors, normal reference."""
    import statsmodels.api as sm

    x = pd.DataFrame({"c": df[cond], "age": df["age_years"],
                      "male": (df["sex"] == "M").astype(float)})
    res = sm.OLS(df["age_gap"].to_numpy(), sm.add_constant(x).to_numpy(float)).fit(
        cov_type="cluster", cov_kwds={"groups": df["patient_id"].astype("category").cat.codes})
    return float(res.pvalues[1])


def run_gap(reps: int, n: int, seed: int, cli_check: int) -> list[dict[str, Any]]:
    rows = []
    for design in ("patient", "film"):
        for m in SIZES:
            hits, fps, old_fps, dfs, est = [], [], [], [], []
            for r in range(reps):
                df = gap_cohort(n, seed + r, m, design)
                f = GapByConditionFitter(correction="none", cluster_col="patient_id",
                                         min_group=2, logistic=False).fit(
                    df, ["planted", "null"], gap_col="age_gap", sex_col="sex")
                a, b = f.summary.loc["planted"], f.summary.loc["null"]
                hits.append(a.coef_lower <= EFFECT <= a.coef_upper)
                est.append(a.coef)
                fps.append(b.p < 0.05)
                dfs.append(b.df)
                old_fps.append(cr1_p(df, "null") < 0.05)
                if r < cli_check:
                    check_cli(df, f)
            label = f"gap, {m} images ({design} design)"
            extra = (f"mean est {np.mean(est):+.2f}; median df {np.median(dfs):.1f}; "
                     f"old CR1 FPR {np.mean(old_fps):.3f}")
            rows.append(row(label, "coverage, +1.0 y", hits, COVERAGE_BAND, extra))
            rows.append(row(label, "false positives", fps, FPR_BAND, ""))
    return rows


def check_cli(df: pd.DataFrame, fitted: GapByConditionFitter) -> None:
    """The same numbers through analyze_cohort (as `xrayage analyze` runs it)."""
    from xrayage.cohort import AnalysisSettings, analyze_cohort

    with tempfile.TemporaryDirectory() as tmp:
        pred = Path(tmp) / "pred.csv"
        df.drop(columns=["age_gap_corrected"]).to_csv(pred, index=False)
        s = AnalysisSettings(conditions=["planted", "null"], cluster="patient_id",
                             correction="none", min_group=2, gap="raw",
                             predictions_held_out=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = analyze_cohort(pred, s)
    assert res.gap_by_condition is not None
    got = res.gap_by_condition.summary
    for c in ("planted", "null"):
        for k in ("coef", "coef_lower", "coef_upper", "p"):
            assert math.isclose(float(got.loc[c, k]), float(fitted.summary.loc[c, k]),
                                rel_tol=1e-6, abs_tol=1e-8), (c, k)


def run_cox(reps: int, n: int, seed: int) -> list[dict[str, Any]]:
    hits, est, fps, logrank, ph, fps_all, events = [], [], [], [], [], [], []
    for r in range(reps):
        df = simulate_cohort(n, seed + r, hr_per_year=HR, films_per_patient=2)
        f = GapCoxFitter(cluster_col="patient_id").fit(
            df, "time", "event", sex_col="sex", diagnostics=False, order_col="film")
        hits.append(f.hazard_ratio_lower_ <= HR <= f.hazard_ratio_upper_)
        est.append(math.log(f.hazard_ratio_))
        events.append(f.n_events_)
        null = simulate_cohort(n, seed + 10_000 + r, hr_per_year=1.0, films_per_patient=2)
        g = GapCoxFitter(cluster_col="patient_id", n_bootstrap=0, cv_folds=0).fit(
            null, "time", "event", gap_col="age_gap_corrected", sex_col="sex",
            order_col="film")
        fps.append(g.p_value_ < 0.05)
        logrank.append(g.logrank_p_ < 0.05)
        ph.append(float(g.ph_test_.loc["gap", "p"]) < 0.05)
        h = GapCoxFitter(cluster_col="patient_id", films="all").fit(
            null, "time", "event", sex_col="sex", diagnostics=False)
        fps_all.append(h.p_value_ < 0.05)
    label = "Cox, 2 films/patient"
    return [
        row(label + " (first film)", "coverage, HR 1.02", hits, COVERAGE_BAND,
            f"geo-mean HR {math.exp(np.mean(est)):.4f}; {np.mean(events):.0f} events"),
        row(label + " (first film)", "false positives, HR 1.00", fps, FPR_BAND, ""),
        row(label + " (first film)", "log-rank false positives", logrank, FPR_BAND,
            "gap tertiles, corrected gap"),
        row(label + " (first film)", "PH-test false positives", ph, FPR_BAND, "gap term"),
        row(label + " (all films, robust)", "false positives, HR 1.00", fps_all, FPR_BAND, ""),
    ]


def run_pace(reps: int, n: int, seed: int) -> list[dict[str, Any]]:
    base, diff, fps, est, conv = [], [], [], [], 0
    for r in range(reps):
        df = simulate_serial_films(n // 3, seed + r, films=3, pace=PACE, pace_effect=PACE_EFFECT)
        f = PaceFitter().fit(df, "patient_id", "study_date", sex_col="sex",
                             conditions=["condition", "null_condition"])
        a, b = f.conditions_.loc["condition"], f.conditions_.loc["null_condition"]
        base.append(a.pace_without_lower <= PACE <= a.pace_without_upper)
        diff.append(a.lower <= PACE_EFFECT <= a.upper)
        est.append(a.difference)
        fps.append(b.p < 0.05)
        conv += bool(f.warnings_)
    label = "pace, 3 films/patient"
    return [
        row(label, "coverage, pace 1.0 (no condition)", base, COVERAGE_BAND, ""),
        row(label, "coverage, +0.3 with condition", diff, COVERAGE_BAND,
            f"mean est {np.mean(est):+.3f}; {conv} fits warned"),
        row(label, "false positives, null condition", fps, FPR_BAND, ""),
    ]


def row(scenario: str, metric: str, flags: list[bool], target: tuple[float, float],
        note: str) -> dict[str, Any]:
    k, n = int(np.sum(flags)), len(flags)
    ci = stats.binomtest(k, n).proportion_ci(0.95)
    rate = k / n
    return {"scenario": scenario, "metric": metric, "rate": rate,
            "ci": f"{ci.low:.3f}–{ci.high:.3f}", "target": f"{target[0]:.2f}–{target[1]:.2f}",
            "ok": target[0] <= rate <= target[1], "reps": n, "note": note}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--n", type=int, default=1500, help="films per cohort")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", nargs="+", default=["gap", "cox", "pace"],
                        choices=["gap", "cox", "pace"])
    parser.add_argument("--cli-check", type=int, default=2,
                        help="repetitions of each gap scenario rerun through analyze_cohort")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    runners: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "gap": lambda: run_gap(args.reps, args.n, args.seed, args.cli_check),
        "cox": lambda: run_cox(args.reps, args.n, args.seed),
        "pace": lambda: run_pace(args.reps, args.n, args.seed),
    }
    rows = []
    for name in args.scenarios:
        start = time.perf_counter()
        rows.extend(runners[name]())
        print(f"# {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    if args.markdown:
        print("| scenario | metric | rate | 95% CI | target | reps | note |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['scenario']} | {r['metric']} | {r['rate']:.3f}"
                  f"{'' if r['ok'] else ' ✗'} | {r['ci']} | {r['target']} | {r['reps']} | "
                  f"{r['note']} |")
    else:
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(table.to_string(index=False))
    return 0 if table["ok"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
