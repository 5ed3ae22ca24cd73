"""Is the age gap larger with a condition? Group means and adjusted models (CR2 inference)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CohortDataError
from ..extras import require
from ._deps import FEATURE, new_axes
from .robust import RobustOLS, cr2_ols
from .table import design, sex_male, to_binary

CORRECTIONS = {"holm": "holm", "bh": "bh", "none": None}
"""Multiple-testing corrections: Holm (family-wise error), Benjamini–Hochberg (FDR), none."""


def adjust_pvalues(p: Any, method: str) -> np.ndarray:
    """Holm (``'holm'``) or Benjamini–Hochberg (``'bh'``) adjusted p-values.

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.04, 0.03], "holm").round(3).tolist()
    [0.03, 0.06, 0.06]
    >>> adjust_pvalues([0.01, 0.04, 0.03], "bh").round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def check_terms(conditions: Sequence[str], covariates: Sequence[str], *, gap_col: str,
                age_col: str, sex_col: str | None = None, by: str | None = None,
                cluster_col: str | None = None, strata: Sequence[str] = ()) -> None:
    """Refuse model terms that overlap: each column may play one role only.

    A condition also given as a covariate would enter the model twice (its coefficient
    split between the two copies); a condition that is the gap, age, sex, subgroup,
    cluster or stratum column makes no sense.

    Raises
    ------
    CohortDataError
        Naming the column and its two roles.

    Examples
    --------
    >>> check_terms(["af"], ["bmi"], gap_col="age_gap", age_col="age_years")
    >>> check_terms(["af"], ["af"], gap_col="age_gap", age_col="age_years")
    Traceback (most recent call last):
    ...
    xrayage.errors.CohortDataError: 'af' is both a condition and a covariate; give it once
    """
    roles: dict[str, str] = {}
    named = [*((c, "condition") for c in conditions), *((c, "covariate") for c in covariates),
             (gap_col, "the gap"), (age_col, "the age column"), (sex_col, "the sex column"),
             (by, "the --by column"), (cluster_col, "the cluster column"),
             *((s, "a stratum") for s in strata)]
    for col, role in named:
        if not col:
            continue
        if col in roles:
            if roles[col] == role:
                raise CohortDataError(f"{col!r} is given twice as a {role}")
            if {roles[col], role} == {"the sex column", "the --by column"}:
                continue  # --by sex: the subgroups are the sexes (sex stays an adjuster)
            if {roles[col], role} == {"the sex column", "a stratum"}:
                continue
            raise CohortDataError(f"{col!r} is both {_a(roles[col])} and {_a(role)}; "
                                  "give it once")
        roles[col] = role


def _a(role: str) -> str:
    return f"a {role}" if role in ("condition", "covariate") else role


class GapByConditionFitter:
    """Age gap with against without each binary condition, adjusted for age, sex and covariates.

    For each condition ``c`` it fits, by ordinary least squares on complete cases,
    ``gap ~ 1 + c + age + sex + covariates`` (``joint=True``: one model with every
    condition) and reports the coefficient of ``c`` in years, its confidence interval and
    p (multiple-testing corrected across the conditions tested), with the unadjusted group
    means and their confidence intervals. Inference is CR2 (Bell–McCaffrey) with
    Satterthwaite degrees of freedom (:func:`~xrayage.cohort.robust.cr2_ols`): clustered on
    `cluster_col` when given, else per image (HC2). It keeps its level when a condition is
    held by a handful of patients, where the usual clustered errors reject 3-4 times too
    often. The paper's reverse model (Ieki et al. 2022), a logistic regression of each
    condition on the gap adjusted for the same terms, is in :attr:`logistic_`, and with
    `by` the condition's effect in each subgroup and the interaction test in
    :attr:`subgroups_`.

    Parameters
    ----------
    alpha : float
        1 - confidence level of every interval.
    correction : {'holm', 'bh', 'none'}
        Adjustment of the p-values across the conditions tested.
    min_group : int
        Conditions with fewer units than this (patients with `cluster_col`, else images)
        in the smaller group are reported (counts, means, point estimate) but not tested:
        no CI or p, and they do not enter the multiple-testing correction. A warning names
        them.
    cluster_col : str, optional
        Patient identifier: errors clustered on it (several images per patient).
    joint : bool
        Fit all conditions in one model (each adjusted for the others) instead of one
        model per condition.
    logistic : bool
        Also fit ``logit P(c) ~ gap + age + sex + covariates`` for each tested condition.

    Attributes
    ----------
    summary : DataFrame
        One row per condition (see :meth:`fit`).
    logistic_ : DataFrame
        Odds ratio of each condition per year of gap (CI, p); clustered (CR1) errors with
        `cluster_col`.
    subgroups_ : DataFrame or None
        With `by`: the adjusted difference in each level of `by` and the interaction p.
    untested_ : list of str
        Conditions below `min_group`.
    warnings_ : list of str
        Small groups, dropped rows, skipped conditions.

    Examples
    --------
    >>> from xrayage.cohort.simulate import simulate_cohort
    >>> df = simulate_cohort(2000, seed=0, condition_effect=1.0)
    >>> f = GapByConditionFitter().fit(df, ["condition"], gap_col="age_gap", sex_col="sex")
    >>> row = f.summary.loc["condition"]
    >>> [round(float(row[k]), 1) for k in ("coef", "coef_lower", "coef_upper")]
    [1.0, 0.5, 1.5]
    """

    def __init__(self, alpha: float = 0.05, correction: str = "holm", min_group: int = 5,
                 cluster_col: str | None = None, joint: bool = False,
                 logistic: bool = True) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {sorted(CORRECTIONS)}")
        if min_group < 2:
            raise ValueError("min_group must be at least 2")
        self.alpha = alpha
        self.correction = correction
        self.min_group = min_group
        self.cluster_col = cluster_col
        self.joint = joint
        self.logistic = logistic

    def fit(self, df: Any, conditions: list[str], gap_col: str = "age_gap",
            age_col: str = "age_years", sex_col: str | None = None,
            covariates: list[str] | tuple[str, ...] = (),
            reference_col: str | None = None, by: str | None = None) -> GapByConditionFitter:
        """Fit the adjusted models.

        Parameters
        ----------
        df : DataFrame
        conditions : list of str
            Binary columns (0/1, true/false, yes/no; missing allowed).
        gap_col, age_col : str
            Age gap and chronological age, in years.
        sex_col : str, optional
            Sex (M/F or 1/0); omitted from the model when None.
        covariates : list of str
            Extra adjustment columns; text columns are one-hot coded.
        reference_col : str, optional
            Binary column of the reference group (e.g. ``no_finding``): each condition is
            compared with these rows only, not with everyone without it.
        by : str, optional
            Binary column (sex, or any 0/1 column) for subgroup estimates and the test of
            the condition-by-subgroup interaction.

        Returns
        -------
        self

        Raises
        ------
        CohortDataError
            A missing column; a condition repeated, also given as a covariate, or equal to
            the gap, age, sex or `by` column; `joint` with `reference_col`.
        """
        pd = require("pandas", "analysis", FEATURE)
        if not conditions:
            raise CohortDataError("no condition column given (--condition or --expand-findings)")
        check_terms(conditions, covariates, gap_col=gap_col, age_col=age_col, sex_col=sex_col,
                    by=by, cluster_col=self.cluster_col)
        if self.joint and reference_col:
            raise CohortDataError("--joint compares every condition with the absence of all "
                                  "of them; drop --reference (or fit separate models)")
        extra = [c for c in (sex_col, reference_col, by, self.cluster_col) if c]
        for col in [gap_col, age_col, *conditions, *extra]:
            if col not in df.columns:
                raise CohortDataError(f"no column {col!r} in the cohort table")
        base = pd.DataFrame({"age": pd.to_numeric(df[age_col], errors="coerce")}, index=df.index)
        if sex_col:
            base["sex_male"] = sex_male(df[sex_col], sex_col)
        base = pd.concat([base, design(df, list(covariates))], axis=1)
        gap = pd.to_numeric(df[gap_col], errors="coerce")
        cluster = df[self.cluster_col].astype(str) if self.cluster_col else None
        by_values = None
        if by:
            by_values = (sex_male(df[by], by) if by == sex_col else to_binary(df[by], by))
        self.by_ = by
        self.warnings_: list[str] = []
        self.adjusted_for_ = list(base.columns)
        ref = to_binary(df[reference_col], reference_col) if reference_col else None
        self.reference_ = reference_col
        conds = {c: to_binary(df[c], c) for c in conditions}
        rows, logit_rows, sub_rows = [], [], []
        if self.joint:
            frame = base.assign(**{f"_c{i}": conds[c] for i, c in enumerate(conditions)},
                                _gap=gap)
            if cluster is not None:
                frame = frame.assign(_cluster=cluster)
            complete = frame.dropna()
            n_dropped = len(frame) - len(complete)
            if n_dropped:
                self.warnings_.append(f"joint model: {n_dropped} of {len(frame)} rows dropped "
                                      "for missing values (complete-case analysis)")
            cond_cols = [f"_c{i}" for i in range(len(conditions))]
            x = np.column_stack([np.ones(len(complete)),
                                 complete[[*cond_cols, *base.columns]].to_numpy(float)])
            fit = None
            if len(complete) > x.shape[1]:
                fit = cr2_ols(complete["_gap"].to_numpy(float), x,
                              None if cluster is None else complete["_cluster"].to_numpy())
            for i, c in enumerate(conditions):
                part = complete.rename(columns={f"_c{i}": "_cond"})
                row = self._describe(c, part, n_dropped)
                rows.append(self._test(row, fit, 1 + i))
        else:
            for c in conditions:
                keep = pd.Series(True, index=df.index)
                if ref is not None:  # compare with the reference group only
                    keep = (conds[c] == 1) != (ref == 1)
                frame = base[keep].assign(_cond=conds[c][keep], _gap=gap[keep])
                if cluster is not None:
                    frame = frame.assign(_cluster=cluster[keep])
                if by_values is not None:
                    frame = frame.assign(_by=by_values[keep])
                complete = frame.dropna()
                row = self._describe(c, complete, len(frame) - len(complete))
                fit = None
                if row["tested"]:
                    x = np.column_stack([np.ones(len(complete)),
                                         complete[["_cond", *base.columns]].to_numpy(float)])
                    fit = cr2_ols(complete["_gap"].to_numpy(float), x,
                                  complete["_cluster"].to_numpy() if cluster is not None
                                  else None)
                elif row["estimable"]:
                    x = np.column_stack([np.ones(len(complete)),
                                         complete[["_cond", *base.columns]].to_numpy(float)])
                    fit = cr2_ols(complete["_gap"].to_numpy(float), x, None)
                rows.append(self._test(row, fit, 1))
                if row["tested"] and self.logistic:
                    logit_rows.append(self._logit(c, complete, base.columns))
                if row["tested"] and by is not None:
                    sub_rows.extend(self._subgroups(c, complete, base.columns, by))
        if self.joint and self.logistic:
            for i, c in enumerate(conditions):
                if rows[i]["tested"]:
                    part = complete.rename(columns={f"_c{i}": "_cond"})
                    logit_rows.append(self._logit(c, part, base.columns))
        table = pd.DataFrame(rows).set_index("condition")
        method = CORRECTIONS[self.correction]
        ok = table["p"].notna()
        table["p_adjusted"] = table["p"]
        if method and ok.sum() > 0:
            table.loc[ok, "p_adjusted"] = adjust_pvalues(table.loc[ok, "p"].to_numpy(), method)
        table["significant"] = table["p_adjusted"] < self.alpha
        self.summary = table
        self.untested_ = [c for c in conditions if not bool(table.loc[c, "tested"])]
        if self.untested_:
            unit = "patients" if self.cluster_col else "images"
            self.warnings_.append(
                f"not tested (fewer than {self.min_group} {unit} with or without the "
                f"condition; estimate shown without CI or p, not in the {self.correction} "
                "correction): " + ", ".join(
                    f"{c} ({int(table.loc[c, 'units_small'])})" for c in self.untested_))
        low_df = [c for c in conditions if bool(table.loc[c, "tested"])
                  and table.loc[c, "df"] < 5]
        if low_df:
            self.warnings_.append(
                "few effective clusters (Satterthwaite df < 5), so wide intervals: "
                + ", ".join(f"{c} (df {table.loc[c, 'df']:.1f})" for c in low_df))
        self.logistic_ = (pd.DataFrame(logit_rows).set_index("condition") if logit_rows
                          else pd.DataFrame(columns=["odds_ratio_per_year", "or_lower",
                                                     "or_upper", "p"]))
        self.subgroups_ = pd.DataFrame(sub_rows) if sub_rows else None
        return self

    def _describe(self, name: str, complete: Any, n_dropped: int) -> dict[str, Any]:
        """Counts, unadjusted means and whether the condition is tested."""
        row: dict[str, Any] = {"condition": name, "n": len(complete), "n_dropped": n_dropped}
        if n_dropped and not self.joint:
            self.warnings_.append(f"{name}: {n_dropped} of {len(complete) + n_dropped} rows "
                                  "dropped for missing values (complete-case analysis)")
        has = complete["_cond"] == 1
        row["n_with"], row["n_without"] = int(has.sum()), int((~has).sum())
        if self.cluster_col:
            row["patients_with"] = int(complete.loc[has, "_cluster"].nunique())
            row["patients_without"] = int(complete.loc[~has, "_cluster"].nunique())
            small = min(row["patients_with"], row["patients_without"])
        else:
            small = min(row["n_with"], row["n_without"])
        for label, part in (("with", complete[has]), ("without", complete[~has])):
            row.update(self._mean_ci(part, label))
        row["difference"] = row["mean_with"] - row["mean_without"]
        row["units_small"] = small
        row["estimable"] = min(row["n_with"], row["n_without"]) >= 1
        row["tested"] = small >= self.min_group
        if not row["estimable"]:
            self.warnings_.append(f"{name}: skipped, no image in one group")
        return row

    def _test(self, row: dict[str, Any], fit: RobustOLS | None, j: int) -> dict[str, Any]:
        nan = math.nan
        if fit is None or not row["estimable"]:
            return {**row, "coef": nan, "coef_lower": nan, "coef_upper": nan, "se": nan,
                    "df": nan, "p": nan}
        if not row["tested"]:
            return {**row, "coef": float(fit.params[j]), "coef_lower": nan, "coef_upper": nan,
                    "se": nan, "df": nan, "p": nan}
        lo, hi = fit.conf_int(self.alpha)[j]
        return {**row, "coef": float(fit.params[j]), "coef_lower": float(lo),
                "coef_upper": float(hi), "se": float(fit.bse[j]), "df": float(fit.df[j]),
                "p": float(fit.pvalues[j])}

    def _mean_ci(self, part: Any, label: str) -> dict[str, float]:
        keys = (f"mean_{label}", f"mean_{label}_lower", f"mean_{label}_upper")
        clusters = part["_cluster"].to_numpy() if self.cluster_col else None
        units = len(part) if clusters is None else len(set(clusters))
        if len(part) < 2 or units < 2:
            mean = float(part["_gap"].mean()) if len(part) else math.nan
            return dict(zip(keys, (mean, math.nan, math.nan), strict=True))
        res = cr2_ols(part["_gap"].to_numpy(float), np.ones((len(part), 1)), clusters)
        lo, hi = res.conf_int(self.alpha)[0]
        return dict(zip(keys, (float(res.params[0]), float(lo), float(hi)), strict=True))

    def _logit(self, name: str, complete: Any, adjust: Any) -> dict[str, Any]:
        """``logit P(condition) ~ gap + adjustment``: odds ratio per year of gap."""
        sm = require("statsmodels.api", "analysis", FEATURE)
        stats = require("scipy.stats", "analysis", FEATURE)
        x = np.column_stack([np.ones(len(complete)),
                             complete[["_gap", *adjust]].to_numpy(float)])
        y = complete["_cond"].to_numpy(float)
        out: dict[str, Any] = {"condition": name, "odds_ratio_per_year": math.nan,
                               "or_lower": math.nan, "or_upper": math.nan, "p": math.nan}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = sm.GLM(y, x, family=sm.families.Binomial())
                if self.cluster_col:
                    groups = complete["_cluster"].astype("category").cat.codes.to_numpy()
                    res = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
                    dfree = max(len(np.unique(groups)) - 1, 1)
                else:
                    res = model.fit()
                    dfree = None
        except Exception as exc:  # perfect separation, singular design
            self.warnings_.append(f"{name}: logistic model failed ({type(exc).__name__})")
            return out
        b, se = float(res.params[1]), float(res.bse[1])
        if not math.isfinite(se) or se <= 0:
            return out
        q = stats.norm.ppf(1 - self.alpha / 2) if dfree is None else stats.t.ppf(
            1 - self.alpha / 2, dfree)
        p = (2 * stats.norm.sf(abs(b / se)) if dfree is None
             else 2 * stats.t.sf(abs(b / se), dfree))
        out.update(odds_ratio_per_year=math.exp(b), or_lower=math.exp(b - q * se),
                   or_upper=math.exp(b + q * se), p=float(p))
        return out

    def _subgroups(self, name: str, complete: Any, adjust: Any, by: str) -> list[dict[str, Any]]:
        """Condition effect within each level of `by` and the interaction test (CR2)."""
        frame = complete.dropna(subset=["_by"])
        cond, lev = frame["_cond"].to_numpy(float), frame["_by"].to_numpy(float)
        others = list(adjust)
        z = frame[others].to_numpy(float)
        clusters = frame["_cluster"].to_numpy() if self.cluster_col else None
        y = frame["_gap"].to_numpy(float)
        has_by = any(np.allclose(frame[c].to_numpy(float), lev) for c in others)
        extra = [] if has_by else [lev]
        rows = []
        # within-level effects: cond*(1-by), cond*by
        x = np.column_stack([np.ones(len(frame)), cond * (1 - lev), cond * lev, *extra, z])
        x2 = np.column_stack([np.ones(len(frame)), cond, cond * lev, *extra, z])
        for level in (0, 1):
            units = (frame.loc[(cond == 1) & (lev == level), "_cluster"].nunique()
                     if clusters is not None else int(((cond == 1) & (lev == level)).sum()))
            if units < self.min_group or np.linalg.matrix_rank(x) < x.shape[1]:
                rows.append({"condition": name, "by": by, "level": level, "n_with": units,
                             "coef": math.nan, "coef_lower": math.nan, "coef_upper": math.nan,
                             "p": math.nan, "p_interaction": math.nan})
                continue
            fit = cr2_ols(y, x, clusters)
            lo, hi = fit.conf_int(self.alpha)[1 + level]
            rows.append({"condition": name, "by": by, "level": level, "n_with": units,
                         "coef": float(fit.params[1 + level]), "coef_lower": float(lo),
                         "coef_upper": float(hi), "p": float(fit.pvalues[1 + level]),
                         "p_interaction": math.nan})
        if all(math.isfinite(float(r["coef"])) for r in rows):
            inter = cr2_ols(y, x2, clusters)
            for r in rows:
                r["p_interaction"] = float(inter.pvalues[2])
        return rows

    def print_summary(self, decimals: int = 2) -> None:
        """Print the summary table."""
        cols = ["n_with", "n_without", "mean_with", "mean_without", "coef", "coef_lower",
                "coef_upper", "df", "p", "p_adjusted"]
        print(f"gap ~ {'all conditions' if self.joint else 'condition'} + "
              f"{' + '.join(self.adjusted_for_)}; {1 - self.alpha:.0%} CI (CR2, Satterthwaite "
              f"df); correction: {self.correction}")
        print(self.summary[cols].round(decimals).to_string())
        if self.logistic and len(self.logistic_):
            print("logit P(condition) ~ gap + adjustment: odds ratio per year of gap")
            print(self.logistic_.round(decimals + 1).to_string())

    def plot(self, ax: Any | None = None) -> Any:
        """Forest plot of the adjusted coefficients (years) with their confidence intervals."""
        table = self.summary.dropna(subset=["coef"]).iloc[::-1]
        ax = ax if ax is not None else new_axes((7.0, 1.2 + 0.45 * max(len(table), 1)))
        y = np.arange(len(table))
        coef = table["coef"].to_numpy(float)
        tested = table["tested"].to_numpy(bool)
        lo = np.where(tested, coef - table["coef_lower"].to_numpy(float), 0.0)
        hi = np.where(tested, table["coef_upper"].to_numpy(float) - coef, 0.0)
        ax.errorbar(coef[tested], y[tested], xerr=[lo[tested], hi[tested]], fmt="o",
                    color="tab:blue", capsize=3)
        if (~tested).any():
            ax.plot(coef[~tested], y[~tested], "o", mfc="white", color="grey",
                    label=f"not tested (< {self.min_group} per group)")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_ylim(-0.6, len(table) - 0.4)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(y, [f"{c} (n={int(r.n_with)})" for c, r in table.iterrows()])
        ax.set_xlabel(f"adjusted difference in age gap, years ({1 - self.alpha:.0%} CI)")
        for yi, (_, r) in zip(y, table.iterrows(), strict=True):
            text = f"p={r.p_adjusted:.2g}" if r.tested else "not tested"
            ax.annotate(text, (1.01, yi), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8)
        note = {"holm": "Holm-adjusted p", "bh": "Benjamini–Hochberg q", "none": "unadjusted p"}
        ax.set_title(f"Age gap by condition ({note[self.correction]})", fontsize=10)
        return ax
