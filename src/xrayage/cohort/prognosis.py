"""Does the age gap predict outcome? Patient-level Cox model, PH check, Kaplan–Meier, C-index."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..errors import CohortDataError
from ..extras import require
from ._deps import FEATURE, new_axes
from .table import design, sex_male, to_binary

KM_GROUPS = ("tertiles", "sign")
"""Kaplan–Meier grouping: gap tertiles, or gap > 0 against gap ≤ 0."""


FILMS = ("first", "all")
"""Which films of a patient enter the Cox model: the first only, or all (robust variance)."""

ORDER_COLUMNS = ("study_date", "acquisition_date", "film_date", "follow_up", "followup")
"""Columns that order a patient's films when none is named (the first one present wins)."""


def first_film(frame: Any, cluster: str, order: Any | None = None) -> Any:
    """One row per patient: the first film by `order` (a Series), else by row order."""
    if order is not None:
        frame = frame.assign(_order=order).sort_values("_order", kind="stable")
        frame = frame.drop(columns="_order")
    return frame[~frame[cluster].duplicated()].sort_index()


class GapCoxFitter:
    """Hazard ratio per year of age gap, adjusted for age, sex and covariates.

    Fits ``h(t) = h0(t) exp(b_gap gap + b_age age + b_sex sex + ...)`` by Cox partial
    likelihood (lifelines) on complete cases, tests proportional hazards on scaled
    Schoenfeld residuals (rank time transform), draws Kaplan–Meier curves by gap group with
    the log-rank p and numbers at risk, and compares the C-index of age alone with
    age + gap, both apparent and cross-validated (patient folds).

    **Patients, not films.** With `cluster_col`, the subject is the patient: by default
    (``films='first'``) each patient's first film (the earliest by the order column, else
    the first row) is the one analysed, with the time and event of that row, so events
    are counted once and the Cox model, PH test, Kaplan–Meier curves, log-rank test and
    C-indices are all patient-level. ``films='all'`` keeps every film in the Cox model with
    robust (sandwich) errors clustered on the patient; the diagnostics stay on the first
    films and the events are still counted per patient.

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
        Patient identifier (several films per patient); see above.
    films : {'first', 'all'}
        With `cluster_col`: the first film per patient, or all films with robust errors.
    n_bootstrap : int
        Patient resamples for the CI of the cross-validated C-index gain (0: none).
    cv_folds : int
        Folds of the cross-validated C-index (0: apparent only).
    seed : int
        Seed of the folds and the bootstrap.

    Attributes
    ----------
    hazard_ratio_, hazard_ratio_lower_, hazard_ratio_upper_, p_value_ : float
        Per year of gap, adjusted.
    n_, n_rows_, n_events_ : int
        Patients (subjects), rows in the Cox model, patients with an event.
    summary : DataFrame
        Every coefficient of the adjusted model (lifelines' summary).
    ph_test_ : DataFrame
        Proportional-hazards test per covariate (statistic, p), patient level.
    c_index_ : dict
        Apparent: ``age``, ``age+gap``, ``adjusted`` (without gap), ``adjusted+gap``.
    c_index_cv_ : dict
        Cross-validated (pooled out-of-fold linear predictors): ``age``, ``age+gap``,
        ``gain`` and ``gain_ci`` (patient bootstrap of the out-of-fold predictions).
    c_index_gain_, c_index_gain_ci_ : float, tuple of float
        The cross-validated gain of age + gap over age and its CI (apparent when
        ``cv_folds=0``).
    interaction_ : dict or None
        With `by`: HR per year of gap in each level, and the interaction p.
    km_, logrank_p_, at_risk_ : dict, float, DataFrame
        Kaplan–Meier fitters by group, the log-rank p, and numbers at risk by time.
    warnings_ : list of str
    """

    def __init__(self, alpha: float = 0.05, km_groups: str = "tertiles", min_events: int = 10,
                 ph_alpha: float = 0.05, cluster_col: str | None = None,
                 n_bootstrap: int = 200, seed: int = 0, films: str = "first",
                 cv_folds: int = 5) -> None:
        if km_groups not in KM_GROUPS:
            raise ValueError(f"km_groups must be one of {KM_GROUPS}")
        if films not in FILMS:
            raise ValueError(f"films must be one of {FILMS}")
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha, self.km_groups, self.min_events = alpha, km_groups, min_events
        self.ph_alpha, self.cluster_col, self.films = ph_alpha, cluster_col, films
        self.n_bootstrap, self.seed, self.cv_folds = n_bootstrap, seed, cv_folds

    def fit(self, df: Any, duration_col: str, event_col: str, gap_col: str = "age_gap",
            age_col: str = "age_years", sex_col: str | None = None,
            covariates: list[str] | tuple[str, ...] = (),
            diagnostics: bool = True, strata: list[str] | tuple[str, ...] = (),
            by: str | None = None, order_col: str | None = None) -> GapCoxFitter:
        """Fit the models.

        Parameters
        ----------
        df : DataFrame
        duration_col : str
            Follow-up time (any unit, > 0), from the film's date (with several films per
            patient, give each row the time from the patient's index film).
        event_col : str
            1 event, 0 censored.
        gap_col, age_col : str
            Age gap and chronological age, in years.
        sex_col : str, optional
        covariates : list of str
        diagnostics : bool
            Also run the PH test, the C-indices and Kaplan–Meier (False: the adjusted Cox
            model only, for fast simulations).
        strata : list of str
            Stratify the baseline hazard on these columns (``--strata``): each level has
            its own baseline, and no coefficient is estimated for them.
        by : str, optional
            Binary column (e.g. sex): the gap's HR in each level and the interaction p.
        order_col : str, optional
            Orders a patient's films (dates or numbers); default the first of
            :data:`ORDER_COLUMNS` present, else the row order.

        Returns
        -------
        self

        Raises
        ------
        CohortDataError
            Missing columns, non-positive times, non-binary events, too few events, terms
            given twice.
        """
        pd = require("pandas", "analysis", FEATURE)
        from .gap_by_condition import check_terms

        check_terms([], covariates, gap_col=gap_col, age_col=age_col, sex_col=sex_col, by=by,
                    cluster_col=self.cluster_col, strata=strata)
        for col in (duration_col, event_col):
            if col in (gap_col, age_col, sex_col, *covariates, *strata):
                raise CohortDataError(f"{col!r} is the survival time or event and a model term")
        for col in (duration_col, event_col, gap_col, age_col,
                    *([sex_col] if sex_col else []), *strata, *([by] if by else [])):
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
        self.strata_ = [f"_s{i}" for i in range(len(strata))]
        for name, col in zip(self.strata_, strata, strict=True):
            frame[name] = df[col].astype("string")
        self.by_ = by
        if by:
            frame["_by"] = sex_male(df[by], by) if by == sex_col else to_binary(df[by], by)
        if self.cluster_col:
            if self.cluster_col not in df.columns:
                raise CohortDataError(f"no column {self.cluster_col!r} (--cluster)")
            frame["_cluster"] = df[self.cluster_col].astype(str)
        self.warnings_: list[str] = []
        complete = frame.dropna()
        self.n_dropped_ = len(frame) - len(complete)
        if self.n_dropped_:
            self.warnings_.append(f"prognosis: {self.n_dropped_} of {len(frame)} rows dropped for "
                                  "missing values (complete-case analysis)")
        if (complete["_T"] <= 0).any():
            raise CohortDataError(f"{duration_col!r} has times ≤ 0; follow-up must be positive")
        patients = complete
        self.film_choice_ = "one row per subject"
        if self.cluster_col:
            order_name = order_col or next((c for c in ORDER_COLUMNS if c in df.columns), None)
            if order_col and order_col not in df.columns:
                raise CohortDataError(f"no column {order_col!r} (--film-order)")
            order = None
            if order_name:
                raw = df.loc[complete.index, order_name]
                order = pd.to_numeric(raw, errors="coerce")
                if order.isna().all():
                    order = pd.to_datetime(raw, errors="coerce")
            patients = first_film(complete, "_cluster", order)
            self.film_choice_ = (f"first film per patient by {order_name!r}" if order_name
                                 else "first film per patient in file order")
            if len(patients) < len(complete):
                events = complete.groupby("_cluster")["_E"].nunique()
                if (events > 1).any():
                    self.warnings_.append(
                        f"prognosis: {int((events > 1).sum())} patients have films with "
                        "different events; each patient's first film is used for the counts")
        self.n_, self.n_events_ = len(patients), int(patients["_E"].sum())
        cox_rows = complete if (self.cluster_col and self.films == "all") else patients
        self.n_rows_ = len(cox_rows)
        self.robust_ = bool(self.cluster_col and self.films == "all")
        if self.n_events_ < self.min_events:
            raise CohortDataError(f"only {self.n_events_} events in {self.n_} patients; the Cox "
                                  f"model needs at least {self.min_events} (min_events)")
        predictors = [c for c in complete.columns if not c.startswith("_")]
        if self.n_events_ / len(predictors) < 10:
            self.warnings_.append(f"prognosis: {self.n_events_} events for {len(predictors)} "
                                  "predictors (< 10 per predictor); estimates may be unstable")
        self.cox_ = self._cox(cox_rows, predictors, robust=self.robust_)
        b, se = float(self.cox_.params_["gap"]), float(self.cox_.standard_errors_["gap"])
        norm = require("scipy.stats", "analysis", FEATURE).norm
        z = float(norm.ppf(1 - self.alpha / 2))
        self.hazard_ratio_ = math.exp(b)
        self.hazard_ratio_lower_ = math.exp(b - z * se)
        self.hazard_ratio_upper_ = math.exp(b + z * se)
        self.p_value_ = float(2 * norm.sf(abs(b / se)))
        self.interaction_ = self._interaction(cox_rows, predictors) if by else None
        if diagnostics:
            self.patient_cox_ = (self.cox_ if cox_rows is patients
                                 else self._cox(patients, predictors))
            self._check_ph(patients)
            self._c_index(patients, predictors)
            self._kaplan_meier(patients)
        return self

    def _cox(self, frame: Any, predictors: list[str], robust: bool = False) -> Any:
        lifelines = require("lifelines", "analysis", FEATURE)
        cols = ["_T", "_E", *predictors, *self.strata_] + (["_cluster"] if robust else [])
        cph = lifelines.CoxPHFitter(alpha=self.alpha)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cph.fit(frame[cols], "_T", "_E", cluster_col="_cluster" if robust else None,
                        strata=self.strata_ or None)
        except (lifelines.exceptions.ConvergenceError, np.linalg.LinAlgError) as exc:
            raise CohortDataError(f"the Cox model did not converge ({exc}); drop covariates that "
                                  "are constant or separate events") from exc
        return cph

    def _interaction(self, frame: Any, predictors: list[str]) -> dict[str, Any]:
        """HR per year of gap in each level of `by`, and the gap-by-`by` interaction p."""
        norm = require("scipy.stats", "analysis", FEATURE).norm
        data = frame.assign(gap_x_by=frame["gap"] * frame["_by"])
        terms = [*predictors, "gap_x_by"]
        if not any(np.allclose(data[c].to_numpy(float), data["_by"].to_numpy(float))
                   for c in predictors):
            data, terms = data.assign(by_level=data["_by"]), [*terms, "by_level"]
        cph = self._cox(data, terms, robust=self.robust_)
        v = cph.variance_matrix_
        b0, b1 = float(cph.params_["gap"]), float(cph.params_["gap_x_by"])
        z = float(norm.ppf(1 - self.alpha / 2))
        out: dict[str, Any] = {"by": self.by_, "p_interaction": float(cph.summary.loc[
            "gap_x_by", "p"])}
        for level, (est, var) in enumerate([
                (b0, float(v.loc["gap", "gap"])),
                (b0 + b1, float(v.loc["gap", "gap"] + v.loc["gap_x_by", "gap_x_by"]
                                + 2 * v.loc["gap", "gap_x_by"]))]):
            se = math.sqrt(var)
            out[f"level_{level}"] = {"hr": math.exp(est), "lower": math.exp(est - z * se),
                                     "upper": math.exp(est + z * se),
                                     "n": int((frame["_by"] == level).sum())}
        return out

    def _check_ph(self, frame: Any) -> None:
        stats = require("lifelines.statistics", "analysis", FEATURE)
        cox = self.patient_cox_
        cols = ["_T", "_E", *cox.params_.index, *self.strata_]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            test = stats.proportional_hazard_test(cox, frame[cols], time_transform="rank")
        table = test.summary[["test_statistic", "p"]]
        if isinstance(table.index, require("pandas", "analysis", FEATURE).MultiIndex):
            table = table.droplevel(-1)
        self.ph_test_ = table
        bonferroni = self.ph_alpha / max(len(self.ph_test_) - 1, 1)
        for name, p in self.ph_test_["p"].items():
            if p < (self.ph_alpha if name == "gap" else bonferroni):
                self.warnings_.append(
                    f"prognosis: proportional hazards doubtful for {name} (Schoenfeld test "
                    f"p={p:.3g}); its HR is an average over follow-up. Consider stratifying on "
                    "it (--strata) or a time interaction")

    def _c_index(self, frame: Any, predictors: list[str]) -> None:
        utils = require("lifelines.utils", "analysis", FEATURE)
        base = [p for p in predictors if p != "gap"]
        models = {"age": ["age"], "age+gap": ["age", "gap"], "adjusted": base}
        self.c_index_ = {"adjusted+gap": float(self.patient_cox_.concordance_index_)}
        for name, cols in models.items():
            self.c_index_[name] = float(self._cox(frame, cols).concordance_index_)
        t, e = frame["_T"].to_numpy(float), frame["_E"].to_numpy(float)
        self.c_index_cv_: dict[str, Any] = {}
        gain = self.c_index_["age+gap"] - self.c_index_["age"]
        self.c_index_gain_: float = gain
        self.c_index_gain_ci_: tuple[float, float] = (math.nan, math.nan)
        if self.cv_folds < 2 or len(frame) < 5 * self.cv_folds:
            return
        rng = np.random.default_rng(self.seed)
        fold = rng.permutation(np.arange(len(frame)) % self.cv_folds)
        risks = {name: np.empty(len(frame)) for name in ("age", "age+gap")}
        for k in range(self.cv_folds):
            train, test = frame[fold != k], frame[fold == k]
            for name in risks:
                cols = models[name]
                cph = self._cox(train, cols)
                risks[name][fold == k] = test[cols].to_numpy(float) @ cph.params_.to_numpy()
        cv: dict[str, Any] = {name: float(utils.concordance_index(t, -r, e))
                              for name, r in risks.items()}
        cv["gain"] = cv["age+gap"] - cv["age"]
        cv["gain_ci"] = (math.nan, math.nan)
        if self.n_bootstrap > 0:
            gains = []
            for _ in range(self.n_bootstrap):
                i = rng.integers(0, len(t), len(t))
                if e[i].sum() == 0:
                    continue
                gains.append(utils.concordance_index(t[i], -risks["age+gap"][i], e[i])
                             - utils.concordance_index(t[i], -risks["age"][i], e[i]))
            q = np.quantile(gains, [self.alpha / 2, 1 - self.alpha / 2])
            cv["gain_ci"] = (float(q[0]), float(q[1]))
        cv["folds"] = self.cv_folds
        self.c_index_cv_ = cv
        self.c_index_gain_, self.c_index_gain_ci_ = cv["gain"], cv["gain_ci"]

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
        print("apparent C-index: " + ", ".join(f"{k} {v:.3f}" for k, v in self.c_index_.items()))
        if self.c_index_cv_:
            cv = self.c_index_cv_
            print(f"cross-validated C-index ({cv['folds']} folds): age {cv['age']:.3f}, "
                  f"age+gap {cv['age+gap']:.3f}, gain {cv['gain']:.3f} "
                  f"({cv['gain_ci'][0]:.3f} to {cv['gain_ci'][1]:.3f})")

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
