"""Longitudinal X-ray age: the pace of X-ray ageing from serial films of the same patient.

For patients with several films, a linear mixed model (statsmodels ``MixedLM``, REML)

``xray_age_ij = b0 + b_t t_ij + b_age age0_i + b_sex male_i + [b_c c_i + b_ct c_i t_ij]
+ u0_i + u1_i t_ij + e_ij``

with ``t`` the years since the patient's first film, ``age0`` the age at that film, and a
random intercept and slope per patient (unstructured 2 x 2 covariance). ``b_t`` is the
**pace of X-ray ageing**: X-ray years per calendar year (1.0 = the chest ages as the
calendar does). ``b_ct`` is how much faster (or slower) it is with condition ``c``.
``b_t + u1_i`` (the BLUP) is patient ``i``'s own pace.

Reading the pace: a model that regresses to the mean (cross-sectional slope of X-ray age
on age below 1, e.g. 0.56 for the bundled model) is expected to show a pace near that
slope, not 1, even in patients who age normally; compare conditions with each other
(``b_ct``), or divide by the cross-sectional slope, rather than reading ``b_t`` against 1.

Real use needs study dates (DICOM ``StudyDate`` / ``AcquisitionDate``, or a date column of
the clinical table): the film order alone (NIH ChestX-ray14's ``Follow-up #``) has no time
scale, so NIH can only validate the code by simulation
(:func:`~xrayage.cohort.simulate.simulate_serial_films`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..errors import CohortDataError
from ..extras import require
from ._deps import FEATURE, new_axes
from .table import sex_male, to_binary


def years_since_first(times: Any, patients: Any) -> Any:
    """Years since each patient's first film, from dates (parsed) or numbers (years).

    Examples
    --------
    >>> import pandas as pd
    >>> t = years_since_first(pd.Series(["2020-01-01", "2021-01-01", "2019-07-02"]),
    ...                       pd.Series(["a", "a", "b"]))
    >>> [round(float(v), 2) for v in t]
    [0.0, 1.0, 0.0]
    """
    pd = require("pandas", "analysis", FEATURE)
    numeric = pd.to_numeric(times, errors="coerce")
    if numeric.notna().sum() >= max(1, int(0.5 * times.notna().sum())):
        years = numeric.astype(float)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not infer format": parsed one by one
            dates = pd.to_datetime(times, errors="coerce")
        if dates.notna().sum() == 0:
            raise CohortDataError("the film time column holds neither dates nor numbers")
        years = (dates - pd.Timestamp("1970-01-01")).dt.days / 365.25
    return years - years.groupby(patients).transform("min")


class PaceFitter:
    """Pace of X-ray ageing (X-ray years per calendar year) and its association with conditions.

    Parameters
    ----------
    alpha : float
        1 - confidence level (Wald intervals of the fixed effects).
    min_patients : int
        Refuse to fit with fewer patients with two or more films.

    Attributes
    ----------
    pace_, pace_lower_, pace_upper_ : float
        Fixed slope of X-ray age on years since the first film (model without conditions).
    conditions_ : DataFrame
        Per condition: pace without it (CI) and with it, their difference (CI, p), and
        serial patients with and without it.
    patient_pace_ : Series
        Each patient's pace (fixed slope + random slope BLUP), patients with >= 2 films.
    random_ : dict
        SDs of the random intercept and slope, their correlation, the residual SD.
    n_films_, n_patients_, n_serial_ : int
        Films, patients, patients with at least two films.
    follow_up_ : dict
        Median and maximum years from first to last film (serial patients).
    warnings_ : list of str

    Examples
    --------
    >>> from xrayage.cohort.simulate import simulate_serial_films
    >>> df = simulate_serial_films(400, seed=0, pace=1.0, pace_effect=0.5)
    >>> f = PaceFitter().fit(df, "patient_id", "study_date", conditions=["condition"])
    >>> round(f.pace_, 1), round(float(f.conditions_.loc["condition", "difference"]), 1)
    (1.1, 0.4)
    """

    def __init__(self, alpha: float = 0.05, min_patients: int = 10) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha, self.min_patients = alpha, min_patients

    def fit(self, df: Any, patient_col: str, time_col: str, xray_col: str = "xray_age",
            age_col: str = "age_years", sex_col: str | None = None,
            conditions: list[str] | tuple[str, ...] = ()) -> PaceFitter:
        """Fit the mixed models: one without conditions (the pace), one per condition.

        Parameters
        ----------
        df : DataFrame
            One row per film.
        patient_col : str
            Patient identifier.
        time_col : str
            Film date (any format pandas parses) or time in years; only differences
            within a patient are used.
        xray_col, age_col : str
            X-ray age and chronological age on the film's date (the age at the first film
            enters the model).
        sex_col : str, optional
        conditions : list of str
            Binary patient-level columns (the first film's value is used).

        Returns
        -------
        self
        """
        pd = require("pandas", "analysis", FEATURE)
        for col in (patient_col, time_col, xray_col, age_col, *([sex_col] if sex_col else []),
                    *conditions):
            if col not in df.columns:
                raise CohortDataError(f"no column {col!r} in the cohort table")
        frame = pd.DataFrame({"_g": df[patient_col].astype(str),
                              "y": pd.to_numeric(df[xray_col], errors="coerce"),
                              "_age": pd.to_numeric(df[age_col], errors="coerce")},
                             index=df.index)
        frame["t"] = years_since_first(df[time_col], frame["_g"])
        if sex_col:
            frame["sex_male"] = sex_male(df[sex_col], sex_col)
        for i, c in enumerate(conditions):
            frame[f"_c{i}"] = to_binary(df[c], c)
        self.warnings_: list[str] = []
        n_all = len(frame)
        frame = frame.dropna()
        if len(frame) < n_all:
            self.warnings_.append(f"pace: {n_all - len(frame)} of {n_all} films dropped for "
                                  "missing values")
        frame = frame.sort_values(["_g", "t"], kind="stable")
        first = frame.groupby("_g").head(1).set_index("_g")
        frame["age0"] = frame["_g"].map(first["_age"] - first["t"])
        self.age0_mean_ = float(first["_age"].mean())
        frame["age0c"] = frame["age0"] - self.age0_mean_
        for i in range(len(conditions)):
            frame[f"_c{i}"] = frame["_g"].map(first[f"_c{i}"])
        films = frame.groupby("_g")["t"].agg(["size", "max"])
        serial = films[films["size"] >= 2]
        self.n_films_, self.n_patients_, self.n_serial_ = len(frame), len(films), len(serial)
        if self.n_serial_ < self.min_patients:
            raise CohortDataError(f"only {self.n_serial_} patients have two or more dated films; "
                                  f"the pace needs at least {self.min_patients}")
        if (serial["max"] <= 0).any():
            self.warnings_.append(f"pace: {int((serial['max'] <= 0).sum())} patients have all "
                                  "films on one date (no time between them)")
        self.follow_up_ = {"median_years": float(serial["max"].median()),
                           "max_years": float(serial["max"].max())}
        adjust = ["age0c", *(["sex_male"] if sex_col else [])]
        self.frame_ = frame
        base = self._mixed(frame, ["t", *adjust])
        self.model_ = base
        self.pace_, self.pace_lower_, self.pace_upper_, self.pace_p_ = self._coef(base, "t")
        re = base.cov_re.to_numpy()
        self.random_ = {"sd_intercept": float(math.sqrt(max(re[0, 0], 0))),
                        "sd_pace": float(math.sqrt(max(re[1, 1], 0))),
                        "corr": float(re[0, 1] / math.sqrt(re[0, 0] * re[1, 1]))
                        if re[0, 0] > 0 and re[1, 1] > 0 else math.nan,
                        "sd_residual": float(math.sqrt(base.scale))}
        blups = pd.DataFrame(base.random_effects).T
        self.patient_pace_ = (self.pace_ + blups.iloc[:, 1]).loc[serial.index]
        rows = []
        for i, c in enumerate(conditions):
            data = frame.assign(cond=frame[f"_c{i}"], cond_t=frame[f"_c{i}"] * frame["t"])
            has = first[f"_c{i}"] == 1
            row: dict[str, Any] = {"condition": c,
                                   "patients_with": int(has[serial.index].sum()),
                                   "patients_without": int((~has[serial.index]).sum())}
            if min(row["patients_with"], row["patients_without"]) < 2:
                self.warnings_.append(f"pace: {c} skipped (fewer than 2 serial patients in a "
                                      "group)")
                rows.append({**row, "pace_without": math.nan, "pace_without_lower": math.nan,
                             "pace_without_upper": math.nan, "pace_with": math.nan,
                             "difference": math.nan, "lower": math.nan, "upper": math.nan,
                             "p": math.nan})
                continue
            fit = self._mixed(data, ["t", "cond", "cond_t", *adjust])
            d, lo, hi, p = self._coef(fit, "cond_t")
            p0, p0_lo, p0_hi, _ = self._coef(fit, "t")
            rows.append({**row, "pace_without": p0, "pace_without_lower": p0_lo,
                         "pace_without_upper": p0_hi,
                         "pace_with": float(fit.fe_params["t"] + fit.fe_params["cond_t"]),
                         "difference": d, "lower": lo, "upper": hi, "p": p})
        self.conditions_ = (pd.DataFrame(rows).set_index("condition") if rows
                            else pd.DataFrame(columns=["difference", "lower", "upper", "p"]))
        return self

    def _mixed(self, frame: Any, terms: list[str]) -> Any:
        sm = require("statsmodels.api", "analysis", FEATURE)
        x = sm.add_constant(frame[terms].to_numpy(float), has_constant="add")
        exog = require("pandas", "analysis", FEATURE).DataFrame(
            x, columns=["const", *terms], index=frame.index)
        z = np.column_stack([np.ones(len(frame)), frame["t"].to_numpy(float)])
        model = sm.MixedLM(frame["y"].to_numpy(float), exog, groups=frame["_g"].to_numpy(),
                           exog_re=z)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = model.fit(reml=True, method=["lbfgs", "powell"])
            except (np.linalg.LinAlgError, ValueError) as exc:
                raise CohortDataError(f"the mixed model failed ({exc})") from exc
        if any("converge" in str(w.message).lower() for w in caught) or not fit.converged:
            msg = "pace: the mixed model may not have converged; read its estimates with care"
            if msg not in self.warnings_:
                self.warnings_.append(msg)
        return fit

    def _coef(self, fit: Any, name: str) -> tuple[float, float, float, float]:
        stats = require("scipy.stats", "analysis", FEATURE)
        b, se = float(fit.fe_params[name]), float(fit.bse_fe[name])
        z = float(stats.norm.ppf(1 - self.alpha / 2))
        return b, b - z * se, b + z * se, float(2 * stats.norm.sf(abs(b / se)))

    def print_summary(self, decimals: int = 2) -> None:
        """Print the pace, the random-effect SDs and the per-condition differences."""
        print(f"{self.n_serial_} of {self.n_patients_} patients with >= 2 films "
              f"({self.n_films_} films); pace {self.pace_:.{decimals}f} "
              f"({self.pace_lower_:.{decimals}f}–{self.pace_upper_:.{decimals}f}) X-ray years "
              "per calendar year")
        print(self.conditions_.round(decimals).to_string())

    def plot_spaghetti(self, ax: Any | None = None, max_patients: int = 80,
                       seed: int = 0) -> Any:
        """X-ray age against years since the first film, one line per patient, and the mean."""
        ax = ax if ax is not None else new_axes((7.0, 4.5))
        frame = self.frame_
        serial = self.patient_pace_.index.to_numpy()
        rng = np.random.default_rng(seed)
        shown = rng.choice(serial, size=min(max_patients, len(serial)), replace=False)
        for g in shown:
            part = frame[frame["_g"] == g]
            ax.plot(part["t"], part["y"], "-", color="grey", alpha=0.35, lw=0.8)
        t = np.linspace(0, float(frame["t"].max()), 20)
        b = self.model_.fe_params
        level = float(b["const"]) + (0.5 * float(b["sex_male"]) if "sex_male" in b else 0.0)
        ax.plot(t, level + self.pace_ * t, color="tab:red", lw=2,
                label=f"mean: pace {self.pace_:.2f} (age {self.age0_mean_:.0f} at first film)")
        ax.set_xlabel("years since first film")
        ax.set_ylabel("X-ray age, years")
        ax.set_title(f"X-ray age over time ({len(shown)} of {len(serial)} serial patients)",
                     fontsize=10)
        ax.legend(fontsize=8)
        return ax

    def plot_pace(self, ax: Any | None = None) -> Any:
        """Each patient's pace (BLUP) with the fixed pace, 1.0, and the paces by condition."""
        ax = ax if ax is not None else new_axes((7.0, 4.0))
        ax.hist(self.patient_pace_, bins=30, color="tab:blue", alpha=0.6)
        ax.axvline(1.0, color="black", lw=1, label="1.0 (calendar)")
        ax.axvline(self.pace_, color="tab:red", lw=2,
                   label=f"pace {self.pace_:.2f} ({self.pace_lower_:.2f}–{self.pace_upper_:.2f})")
        for name, r in self.conditions_.iterrows():
            if math.isfinite(r["pace_with"]):
                ax.axvline(r["pace_with"], ls="--", lw=1, label=f"with {name}: "
                           f"{r['pace_with']:.2f}")
        ax.set_xlabel("pace of X-ray ageing, X-ray years per calendar year (patient BLUPs)")
        ax.set_ylabel("patients")
        ax.set_title("Pace of X-ray ageing", fontsize=10)
        ax.legend(fontsize=7)
        return ax


__all__ = ["PaceFitter", "years_since_first"]
