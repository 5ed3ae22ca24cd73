"""Is the age gap larger with a condition? Group means and an adjusted model per condition."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import CohortDataError
from ..extras import require
from ._deps import FEATURE, new_axes
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


class GapByConditionFitter:
    """Age gap with against without each binary condition, adjusted for age, sex and covariates.

    For each condition ``c`` it fits, by ordinary least squares on complete cases,
    ``gap ~ 1 + c + age + sex + covariates`` and reports the coefficient of ``c`` in years,
    its confidence interval and p (multiple-testing corrected across conditions), with the
    unadjusted group means and their confidence intervals.

    Parameters
    ----------
    alpha : float
        1 - confidence level of every interval.
    correction : {'holm', 'bh', 'none'}
        Adjustment of the p-values across conditions.
    min_group : int
        Warn when fewer images than this have (or lack) a condition.
    cluster_col : str, optional
        Patient identifier: standard errors robust to several images per patient.

    Attributes
    ----------
    summary : DataFrame
        One row per condition (see :meth:`fit`).
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

    def __init__(self, alpha: float = 0.05, correction: str = "holm", min_group: int = 10,
                 cluster_col: str | None = None) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {sorted(CORRECTIONS)}")
        self.alpha = alpha
        self.correction = correction
        self.min_group = min_group
        self.cluster_col = cluster_col

    def fit(self, df: Any, conditions: list[str], gap_col: str = "age_gap",
            age_col: str = "age_years", sex_col: str | None = None,
            covariates: list[str] | tuple[str, ...] = (),
            reference_col: str | None = None) -> GapByConditionFitter:
        """Fit one adjusted model per condition.

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

        Returns
        -------
        self
        """
        pd = require("pandas", "analysis", FEATURE)
        if not conditions:
            raise CohortDataError("no condition column given (--condition or --expand-findings)")
        extra = [c for c in (sex_col, reference_col) if c]
        for col in [gap_col, age_col, *conditions, *extra]:
            if col not in df.columns:
                raise CohortDataError(f"no column {col!r} in the cohort table")
        base = pd.DataFrame({"age": pd.to_numeric(df[age_col], errors="coerce")}, index=df.index)
        if sex_col:
            base["sex_male"] = sex_male(df[sex_col], sex_col)
        base = pd.concat([base, design(df, list(covariates))], axis=1)
        gap = pd.to_numeric(df[gap_col], errors="coerce")
        cluster = df[self.cluster_col] if self.cluster_col else None
        self.warnings_: list[str] = []
        self.adjusted_for_ = list(base.columns)
        ref = to_binary(df[reference_col], reference_col) if reference_col else None
        self.reference_ = reference_col
        rows = []
        for c in conditions:
            cond = to_binary(df[c], c)
            keep = pd.Series(True, index=df.index)
            if ref is not None:  # compare with the reference group only
                keep = (cond == 1) != (ref == 1)
            rows.append(self._fit_one(c, cond[keep], gap[keep], base[keep],
                                      None if cluster is None else cluster[keep]))
        table = pd.DataFrame(rows).set_index("condition")
        method = CORRECTIONS[self.correction]
        ok = table["p"].notna()
        table["p_adjusted"] = table["p"]
        if method and ok.sum() > 0:
            table.loc[ok, "p_adjusted"] = adjust_pvalues(table.loc[ok, "p"].to_numpy(), method)
        table["significant"] = table["p_adjusted"] < self.alpha
        self.summary = table
        return self

    def _fit_one(self, name: str, cond: Any, gap: Any, base: Any, cluster: Any) -> dict[str, Any]:
        sm = require("statsmodels.api", "analysis", FEATURE)
        frame = base.assign(_cond=cond, _gap=gap)
        if cluster is not None:
            frame = frame.assign(_cluster=cluster)
        complete = frame.dropna()
        row: dict[str, Any] = {"condition": name, "n": len(complete),
                               "n_dropped": len(frame) - len(complete)}
        if row["n_dropped"]:
            self.warnings_.append(f"{name}: {row['n_dropped']} of {len(frame)} rows dropped for "
                                  "missing values (complete-case analysis)")
        has = complete["_cond"] == 1
        row["n_with"], row["n_without"] = int(has.sum()), int((~has).sum())
        for label, part in (("with", complete[has]), ("without", complete[~has])):
            row.update(self._mean_ci(part, label, sm))
        row["difference"] = row["mean_with"] - row["mean_without"]
        small = min(row["n_with"], row["n_without"])
        unit = "image"
        if self.cluster_col:  # clustered errors need at least 2 patients per group
            small = min(complete.loc[has, "_cluster"].nunique(),
                        complete.loc[~has, "_cluster"].nunique())
            unit = "patient"
        if small < 2:
            self.warnings_.append(f"{name}: skipped, only {small} {unit}(s) in one group")
            return {**row, "coef": math.nan, "coef_lower": math.nan, "coef_upper": math.nan,
                    "se": math.nan, "p": math.nan}
        if small < self.min_group:
            self.warnings_.append(f"{name}: small group ({small} {unit}s); estimate unstable")
        x = sm.add_constant(complete[["_cond", *base.columns]].to_numpy(float), has_constant="add")
        res = self._ols(sm, complete["_gap"].to_numpy(float), x, complete)
        lo, hi = res.conf_int(self.alpha)[1]
        return {**row, "coef": float(res.params[1]), "coef_lower": float(lo),
                "coef_upper": float(hi), "se": float(res.bse[1]), "p": float(res.pvalues[1])}

    def _ols(self, sm: Any, y: np.ndarray, x: np.ndarray, frame: Any) -> Any:
        model = sm.OLS(y, x)
        if self.cluster_col:
            groups = frame["_cluster"].astype("category").cat.codes.to_numpy()
            return model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        return model.fit()

    def _mean_ci(self, part: Any, label: str, sm: Any) -> dict[str, float]:
        keys = (f"mean_{label}", f"mean_{label}_lower", f"mean_{label}_upper")
        if len(part) < 2 or (self.cluster_col and part["_cluster"].nunique() < 2):
            mean = float(part["_gap"].mean()) if len(part) else math.nan
            return dict(zip(keys, (mean, math.nan, math.nan), strict=True))
        res = self._ols(sm, part["_gap"].to_numpy(float), np.ones((len(part), 1)), part)
        lo, hi = res.conf_int(self.alpha)[0]
        return dict(zip(keys, (float(res.params[0]), float(lo), float(hi)), strict=True))

    def print_summary(self, decimals: int = 2) -> None:
        """Print the summary table."""
        cols = ["n_with", "n_without", "mean_with", "mean_without", "coef", "coef_lower",
                "coef_upper", "p", "p_adjusted"]
        print(f"gap ~ condition + {' + '.join(self.adjusted_for_)}; "
              f"{1 - self.alpha:.0%} CI; correction: {self.correction}")
        print(self.summary[cols].round(decimals).to_string())

    def plot(self, ax: Any | None = None) -> Any:
        """Forest plot of the adjusted coefficients (years) with their confidence intervals."""
        table = self.summary.dropna(subset=["coef"]).iloc[::-1]
        ax = ax if ax is not None else new_axes((7.0, 1.2 + 0.45 * max(len(table), 1)))
        y = np.arange(len(table))
        coef = table["coef"].to_numpy(float)
        err = [coef - table["coef_lower"].to_numpy(float),
               table["coef_upper"].to_numpy(float) - coef]
        ax.errorbar(coef, y, xerr=err, fmt="o", color="tab:blue", capsize=3)
        ax.set_ylim(-0.6, len(table) - 0.4)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(y, [f"{c} (n={int(r.n_with)})" for c, r in table.iterrows()])
        ax.set_xlabel(f"adjusted difference in age gap, years ({1 - self.alpha:.0%} CI)")
        for yi, (_, r) in zip(y, table.iterrows(), strict=True):
            ax.annotate(f"p={r.p_adjusted:.2g}", (1.01, yi), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8)
        note = {"holm": "Holm-adjusted p", "bh": "Benjamini–Hochberg q", "none": "unadjusted p"}
        ax.set_title(f"Age gap by condition ({note[self.correction]})", fontsize=10)
        return ax
