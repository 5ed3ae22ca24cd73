"""Does the age gap predict outcome? Cox model, PH check, Kaplan–Meier by gap group, C-index."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import CohortDataError
from ..extras import require
from ._deps import FEATURE, new_axes
from .table import design, sex_male, to_binary

KM_GROUPS = ("tertiles", "sign")
"""Kaplan–Meier grouping: gap tertiles, or gap > 0 against gap ≤ 0."""


class GapCoxFitter:
    """Hazard ratio per year of age gap, adjusted for age, sex and covariates.

    Fits ``h(t) = h0(t) exp(b_gap gap + b_age age + b_sex sex + ...)`` by Cox partial
    likelihood (lifelines) on complete cases, tests proportional hazards on scaled
    Schoenfeld residuals (rank time transform), draws Kaplan–Meier curves by gap group with
    the log-rank p and numbers at risk, and compares the C-index of age alone with age + gap.

    Parameters
    ----------
    alpha : float
        1 - confidence level.
    km_groups : {'tertiles', 'sign'}
        Gap groups of the Kaplan–Meier curves.
    min_events : int
        Refuse to fit with fewer events (too few for any hazard ratio).
    ph_alpha : float
        Warn when the gap's proportional-hazards test p is below this (for the other
        covariates, below ``ph_alpha`` divided by their number).
    cluster_col : str, optional
        Patient identifier: robust (sandwich) errors for several images per patient.
    n_bootstrap : int
        Resamples for the CI of the C-index gain (0: none). Coefficients are held fixed,
        so the CI ignores refitting; the gain is an apparent (in-sample) one.
    seed : int
        Seed of the bootstrap.

    Attributes
    ----------
    hazard_ratio_, hazard_ratio_lower_, hazard_ratio_upper_, p_value_ : float
        Per year of gap, adjusted.
    summary : DataFrame
        Every coefficient of the adjusted model (lifelines' summary).
    ph_test_ : DataFrame
        Proportional-hazards test per covariate (statistic, p).
    c_index_ : dict
        ``age``, ``age+gap``, ``adjusted`` (without gap), ``adjusted+gap``.
    c_index_gain_ci_ : tuple of float
        Bootstrap CI of C(age+gap) - C(age).
    km_, logrank_p_, at_risk_ : dict, float, DataFrame
        Kaplan–Meier fitters by group, the log-rank p, and numbers at risk by time.
    warnings_ : list of str
    """

    def __init__(self, alpha: float = 0.05, km_groups: str = "tertiles", min_events: int = 10,
                 ph_alpha: float = 0.05, cluster_col: str | None = None,
                 n_bootstrap: int = 200, seed: int = 0) -> None:
        if km_groups not in KM_GROUPS:
            raise ValueError(f"km_groups must be one of {KM_GROUPS}")
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha, self.km_groups, self.min_events = alpha, km_groups, min_events
        self.ph_alpha, self.cluster_col = ph_alpha, cluster_col
        self.n_bootstrap, self.seed = n_bootstrap, seed

    def fit(self, df: Any, duration_col: str, event_col: str, gap_col: str = "age_gap",
            age_col: str = "age_years", sex_col: str | None = None,
            covariates: list[str] | tuple[str, ...] = (),
            diagnostics: bool = True) -> GapCoxFitter:
        """Fit the models.

        Parameters
        ----------
        df : DataFrame
        duration_col : str
            Follow-up time (any unit, > 0).
        event_col : str
            1 event, 0 censored.
        gap_col, age_col : str
            Age gap and chronological age, in years.
        sex_col : str, optional
        covariates : list of str
        diagnostics : bool
            Also run the PH test, the C-indices and Kaplan–Meier (False: the adjusted Cox
            model only, for fast simulations).

        Returns
        -------
        self

        Raises
        ------
        CohortDataError
            Missing columns, non-positive times, non-binary events, too few events.
        """
        pd = require("pandas", "analysis", FEATURE)
        for col in (duration_col, event_col, gap_col, age_col, *([sex_col] if sex_col else [])):
            if col not in df.columns:
                raise CohortDataError(f"no column {col!r} in the cohort table")
        frame = pd.DataFrame({
            "_T": pd.to_numeric(df[duration_col], errors="coerce"),
            "_E": to_binary(df[event_col], event_col),
            "gap": pd.to_numeric(df[gap_col], errors="coerce"),
            "age": pd.to_numeric(df[age_col], errors="coerce"),
        }, index=df.index)
        if sex_col:
            frame["sex_male"] = sex_male(df[sex_col], sex_col)
        frame = pd.concat([frame, design(df, list(covariates))], axis=1)
        if self.cluster_col:
            frame["_cluster"] = df[self.cluster_col].astype(str)
        self.warnings_: list[str] = []
        complete = frame.dropna()
        self.n_dropped_ = len(frame) - len(complete)
        if self.n_dropped_:
            self.warnings_.append(f"prognosis: {self.n_dropped_} of {len(frame)} rows dropped for "
                                  "missing values (complete-case analysis)")
        if (complete["_T"] <= 0).any():
            raise CohortDataError(f"{duration_col!r} has times ≤ 0; follow-up must be positive")
        self.n_, self.n_events_ = len(complete), int(complete["_E"].sum())
        if self.n_events_ < self.min_events:
            raise CohortDataError(f"only {self.n_events_} events in {self.n_} patients; the Cox "
                                  f"model needs at least {self.min_events} (min_events)")
        predictors = [c for c in complete.columns if not c.startswith("_")]
        if self.n_events_ / len(predictors) < 10:
            self.warnings_.append(f"prognosis: {self.n_events_} events for {len(predictors)} "
                                  "predictors (< 10 per predictor); estimates may be unstable")
        self.cox_ = self._cox(complete, predictors)
        b, se = float(self.cox_.params_["gap"]), float(self.cox_.standard_errors_["gap"])
        z = float(require("scipy.stats", "analysis", FEATURE).norm.ppf(1 - self.alpha / 2))
        self.hazard_ratio_ = math.exp(b)
        self.hazard_ratio_lower_ = math.exp(b - z * se)
        self.hazard_ratio_upper_ = math.exp(b + z * se)
        self.p_value_ = float(2 * require("scipy.stats", "analysis", FEATURE).norm.sf(abs(b / se)))
        if diagnostics:
            self._check_ph(complete)
            self._c_index(complete, predictors)
            self._kaplan_meier(complete)
        return self

    def _cox(self, frame: Any, predictors: list[str]) -> Any:
        lifelines = require("lifelines", "analysis", FEATURE)
        cols = ["_T", "_E", *predictors] + (["_cluster"] if self.cluster_col else [])
        cph = lifelines.CoxPHFitter(alpha=self.alpha)
        try:
            cph.fit(frame[cols], "_T", "_E",
                    cluster_col="_cluster" if self.cluster_col else None)
        except lifelines.exceptions.ConvergenceError as exc:
            raise CohortDataError(f"the Cox model did not converge ({exc}); drop covariates that "
                                  "are constant or separate events") from exc
        return cph

    def _check_ph(self, frame: Any) -> None:
        stats = require("lifelines.statistics", "analysis", FEATURE)
        cols = ["_T", "_E", *self.cox_.params_.index] + (["_cluster"] if self.cluster_col else [])
        test = stats.proportional_hazard_test(self.cox_, frame[cols], time_transform="rank")
        self.ph_test_ = test.summary[["test_statistic", "p"]]
        bonferroni = self.ph_alpha / max(len(self.ph_test_) - 1, 1)
        for name, p in self.ph_test_["p"].items():
            if p < (self.ph_alpha if name == "gap" else bonferroni):
                self.warnings_.append(
                    f"prognosis: proportional hazards doubtful for {name} (Schoenfeld test "
                    f"p={p:.3g}); its HR is an average over follow-up. Consider stratifying on "
                    "it or a time interaction")

    def _c_index(self, frame: Any, predictors: list[str]) -> None:
        utils = require("lifelines.utils", "analysis", FEATURE)
        base = [p for p in predictors if p != "gap"]
        models = {"age": ["age"], "age+gap": ["age", "gap"], "adjusted": base}
        self.c_index_ = {"adjusted+gap": float(self.cox_.concordance_index_)}
        risks = {}
        for name, cols in models.items():
            cph = self._cox(frame, cols)
            self.c_index_[name] = float(cph.concordance_index_)
            risks[name] = frame[cols].to_numpy(float) @ cph.params_.to_numpy()
        self.c_index_gain_ = self.c_index_["age+gap"] - self.c_index_["age"]
        self.c_index_gain_ci_ = (math.nan, math.nan)
        if self.n_bootstrap > 0:
            rng = np.random.default_rng(self.seed)
            t, e = frame["_T"].to_numpy(), frame["_E"].to_numpy()
            gains = []
            for _ in range(self.n_bootstrap):
                i = rng.integers(0, len(t), len(t))
                if e[i].sum() == 0:
                    continue
                gains.append(utils.concordance_index(t[i], -risks["age+gap"][i], e[i])
                             - utils.concordance_index(t[i], -risks["age"][i], e[i]))
            q = np.quantile(gains, [self.alpha / 2, 1 - self.alpha / 2])
            self.c_index_gain_ci_ = (float(q[0]), float(q[1]))

    def _kaplan_meier(self, frame: Any) -> None:
        lifelines = require("lifelines", "analysis", FEATURE)
        stats = require("lifelines.statistics", "analysis", FEATURE)
        pd = require("pandas", "analysis", FEATURE)
        gap = frame["gap"]
        if self.km_groups == "sign":
            groups = pd.Series(np.where(gap > 0, "gap > 0", "gap ≤ 0"), index=frame.index)
        else:
            edges = gap.quantile([1 / 3, 2 / 3]).to_numpy()
            names = [f"gap < {edges[0]:.1f} y", f"gap {edges[0]:.1f} to {edges[1]:.1f} y",
                     f"gap ≥ {edges[1]:.1f} y"]
            groups = pd.Series(np.select([gap < edges[0], gap < edges[1]], names[:2], names[2]),
                               index=frame.index)
        order = sorted(groups.unique(), key=lambda g: frame.loc[groups == g, "gap"].mean())
        self.km_ = {}
        for g in order:
            part = frame[groups == g]
            self.km_[g] = lifelines.KaplanMeierFitter(alpha=self.alpha).fit(
                part["_T"], part["_E"], label=f"{g} (n={len(part)})")
            if len(part) < 20 or part["_E"].sum() < 5:
                self.warnings_.append(f"Kaplan–Meier: small group {g!r} ({len(part)} patients, "
                                      f"{int(part['_E'].sum())} events)")
        self.logrank_p_ = float(stats.multivariate_logrank_test(
            frame["_T"], groups, frame["_E"]).p_value)
        times = np.linspace(0, float(frame["_T"].max()), 5)
        self.at_risk_ = pd.DataFrame(
            {g: [int((frame.loc[groups == g, "_T"] >= t).sum()) for t in times] for g in order},
            index=pd.Index(np.round(times, 2), name="time"))

    @property
    def summary(self) -> Any:
        """Every coefficient of the adjusted Cox model (lifelines' summary table)."""
        return self.cox_.summary

    def print_summary(self, decimals: int = 2) -> None:
        """Print the hazard ratio of the gap, the PH test and the C-indices."""
        print(f"n={self.n_}, events={self.n_events_}; HR per year of gap "
              f"{self.hazard_ratio_:.{decimals + 1}f} ({self.hazard_ratio_lower_:.{decimals + 1}f}"
              f"–{self.hazard_ratio_upper_:.{decimals + 1}f}), p={self.p_value_:.3g}")
        print(self.summary[["exp(coef)", "p"]].round(decimals + 1).to_string())
        print("C-index: " + ", ".join(f"{k} {v:.3f}" for k, v in self.c_index_.items()))

    def plot(self, ax: Any | None = None, at_risk: bool = True) -> Any:
        """Kaplan–Meier curves by gap group, log-rank p, numbers at risk below the axes."""
        ax = ax if ax is not None else new_axes((7.0, 5.0))
        for kmf in self.km_.values():
            kmf.plot_survival_function(ax=ax, ci_show=True)
        ax.set_xlabel("time")
        ax.set_ylabel("event-free probability")
        ax.set_title(f"Kaplan–Meier by age gap ({self.km_groups}); log-rank "
                     f"p={self.logrank_p_:.3g}", fontsize=10)
        if at_risk:
            plotting = require("lifelines.plotting", "analysis", FEATURE)
            plotting.add_at_risk_counts(*self.km_.values(), ax=ax, fig=ax.figure,
                                        rows_to_show=["At risk"])
        return ax
