"""One cohort analysis from predictions (and a clinical table) to results, figures and warnings."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CohortDataError
from ..extras import require
from ..provenance import sidecar_path
from ._deps import FEATURE
from .accuracy import age_accuracy, plot_bland_altman, plot_scatter
from .gap_by_condition import GapByConditionFitter, check_terms
from .longitudinal import PaceFitter
from .prognosis import GapCoxFitter
from .table import Provenance, expand_findings, merge_clinical, read_predictions, read_table

logger = logging.getLogger(__name__)

GAP_COLUMNS = {"raw": "age_gap", "corrected": "age_gap_corrected"}


@dataclass
class AnalysisSettings:
    """What to analyse; mirrors the ``xrayage analyze`` options.

    Attributes
    ----------
    conditions : list of str
        Binary condition columns.
    expand_findings : str, optional
        A pipe-separated label column to expand into indicator columns (all become
        conditions unless `conditions` names some of them).
    reference : str, optional
        Compare each condition with this indicator's rows only (e.g. ``no_finding``).
    time, event : str, optional
        Follow-up time and event indicator (both or neither).
    covariates : list of str
        Adjustment columns besides age and sex.
    gap : {'auto', 'raw', 'corrected'}
        ``auto``: corrected when the column has values, else raw.
    age, sex : str, optional
        Column names; None finds ``age_years`` (or, from a clinical table, the legacy
        ``chronological_age``) and ``sex``/``sex_male``.
    cluster : str, optional
        Patient identifier (several images per patient): CR2 clustered errors for the gap
        models, patient-level survival.
    joint : bool
        One gap model with every condition (each adjusted for the others).
    by : str, optional
        Binary column (e.g. ``sex``) for subgroup estimates and interaction tests.
    strata : list of str
        Stratify the Cox baseline hazard on these columns.
    films : {'first', 'all'}
        Survival with `cluster`: each patient's first film, or all films (robust errors).
    film_order : str, optional
        Column ordering a patient's films (date or number); see
        :data:`~xrayage.cohort.prognosis.ORDER_COLUMNS`.
    pace_time : str, optional
        Film date (or years) column: fit the pace of X-ray ageing on serial films
        (needs `cluster`).
    correction, km_groups, alpha, min_group, n_bootstrap, cv_folds : see the fitters.
    predictions_held_out, allow_in_sample : bool
        See :func:`~xrayage.cohort.table.read_predictions`.
    """

    conditions: list[str] = field(default_factory=list)
    expand_findings: str | None = None
    reference: str | None = None
    time: str | None = None
    event: str | None = None
    covariates: list[str] = field(default_factory=list)
    gap: str = "auto"
    age: str | None = None
    sex: str | None = None
    cluster: str | None = None
    correction: str = "holm"
    km_groups: str = "tertiles"
    alpha: float = 0.05
    min_group: int = 5
    n_bootstrap: int = 200
    cv_folds: int = 5
    joint: bool = False
    by: str | None = None
    strata: list[str] = field(default_factory=list)
    films: str = "first"
    film_order: str | None = None
    pace_time: str | None = None
    predictions_held_out: bool = False
    allow_in_sample: bool = False


@dataclass
class CohortAnalysis:
    """Results of :func:`analyze_cohort`: numbers, fitted estimators, figures, warnings."""

    settings: AnalysisSettings
    provenance: Provenance
    counts: dict[str, int]
    columns: dict[str, str | None]
    accuracy: dict[str, Any] | None = None
    gap_by_condition: GapByConditionFitter | None = None
    prognosis: GapCoxFitter | None = None
    pace: PaceFitter | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def analyze_cohort(predictions: str | Path, settings: AnalysisSettings,
                   clinical: str | Path | None = None, on: str | None = None) -> CohortAnalysis:
    """Run the accuracy, gap-by-condition and prognosis analyses.

    Parameters
    ----------
    predictions : str or Path
        ``xrayage predict`` (or ``crossfit``) output, CSV or JSON lines.
    settings : AnalysisSettings
    clinical : str or Path, optional
        A table joined on `on` (see :func:`~xrayage.cohort.table.merge_clinical`).
    on : str, optional
        Join column; required with `clinical`.

    Returns
    -------
    CohortAnalysis

    Raises
    ------
    CohortDataError
        Bad or missing columns, nothing to analyse, too few events.
    """
    s = settings
    if (s.time is None) != (s.event is None):
        raise CohortDataError("give both --time and --event, or neither")
    if clinical is not None and not on:
        raise CohortDataError("--clinical needs --on ID_COLUMN")
    df, prov = read_predictions(predictions, held_out=s.predictions_held_out,
                                allow_in_sample=s.allow_in_sample)
    warn: list[str] = []
    if not prov.trusted:
        warn.append("IN-SAMPLE RISK: nothing shows these predictions were made on images the "
                    "model never trained on. Gaps on training images shrink towards zero and "
                    "bias every result below. Use `xrayage crossfit` (out-of-fold predictions) "
                    "or state --predictions-held-out for an external cohort."
                    if prov.n_in_sample_kept == 0 else
                    f"IN-SAMPLE PREDICTIONS USED: {prov.n_in_sample_kept} rows are flagged "
                    "in_sample and were kept (--allow-in-sample); results are biased.")
    if prov.status == "unverified" and "fold" in df.columns:
        warn.append("the predictions have a 'fold' column but no provenance sidecar "
                    f"({sidecar_path(predictions).name}); a column name does not show they are "
                    "out-of-fold. Keep the sidecar `crossfit` or the ridge build writes, or "
                    "pass --predictions-held-out")
    if prov.correction_in_sample:
        bc = prov.details.get("bias_correction") or {}
        warn.append("the bias correction behind age_gap_corrected was fitted on these same "
                    f"images ({bc.get('fitted_on')}, n={bc.get('n')}): the corrected gap is "
                    "centred on this cohort by construction, so its mean is ~0 here and "
                    "unadjusted means describe this cohort only. Adjusted models include age "
                    "and are unaffected; for an external check fit the correction elsewhere")
    if s.pace_time and not s.cluster:
        raise CohortDataError("--pace-time needs --cluster PATIENT_ID (films are grouped by "
                              "patient)")
    if prov.n_in_sample_dropped:
        warn.append(f"{prov.n_in_sample_dropped} in-sample rows were dropped")
    counts = {"n_predictions": len(df)}
    usable = df["xray_age"].notna()
    if "qc_status" in df.columns:
        usable &= ~df["qc_status"].isin(["reject", "error"])
    counts["n_unusable"] = int((~usable).sum())
    if counts["n_unusable"]:
        warn.append(f"{counts['n_unusable']} of {len(df)} predictions are rejected, failed or "
                    "empty and were left out")
    df = df.loc[usable].reset_index(drop=True)
    if clinical is not None:
        df, merge_counts = merge_clinical(df, read_table(clinical), on or "")
        counts.update(merge_counts)
        if merge_counts["n_matched"] < counts["n_predictions"] - counts["n_unusable"]:
            warn.append(f"only {merge_counts['n_matched']} usable predictions matched the "
                        f"clinical table on {on!r}")
    conditions = list(s.conditions)
    if s.expand_findings:
        df, labels = expand_findings(df, s.expand_findings)
        if not conditions:
            conditions = [lab for lab in labels if lab != s.reference]
    df, columns = _resolve_columns(df, s, warn)
    counts["n_analysed"] = len(df)
    result = CohortAnalysis(settings=s, provenance=prov, counts=counts, columns=columns,
                            warnings=warn)
    _accuracy(df, columns, result)
    covariates = list(s.covariates)
    by = s.by
    if by and by == s.sex:
        by = columns["sex"]
    check_terms(conditions, covariates, gap_col=columns["gap"] or "",
                age_col=columns["age"] or "", sex_col=columns["sex"], by=by,
                cluster_col=s.cluster, strata=s.strata)
    if conditions:
        fitter = GapByConditionFitter(alpha=s.alpha, correction=s.correction,
                                      min_group=s.min_group, cluster_col=s.cluster,
                                      joint=s.joint)
        fitter.fit(df, conditions, gap_col=columns["gap"] or "", age_col=columns["age"] or "",
                   sex_col=columns["sex"], covariates=covariates, reference_col=s.reference,
                   by=None if s.joint else by)
        result.gap_by_condition = fitter
        result.figures["gap_forest"] = fitter.plot()
        warn.extend(fitter.warnings_)
    if s.time and s.event:
        cox = GapCoxFitter(alpha=s.alpha, km_groups=s.km_groups, cluster_col=s.cluster,
                           n_bootstrap=s.n_bootstrap, films=s.films, cv_folds=s.cv_folds)
        cox.fit(df, s.time, s.event, gap_col=columns["gap"] or "", age_col=columns["age"] or "",
                sex_col=columns["sex"], covariates=covariates, strata=s.strata, by=by,
                order_col=s.film_order)
        result.prognosis = cox
        result.figures["km"] = cox.plot()
        warn.extend(cox.warnings_)
    if s.pace_time:
        pace = PaceFitter(alpha=s.alpha).fit(
            df, s.cluster or "", s.pace_time, age_col=columns["age"] or "",
            sex_col=columns["sex"], conditions=conditions)
        result.pace = pace
        result.figures["pace_spaghetti"] = pace.plot_spaghetti()
        result.figures["pace"] = pace.plot_pace()
        warn.extend(pace.warnings_)
    if not conditions and not (s.time and s.event) and not s.pace_time:
        warn.append("no --condition, --expand-findings or --time/--event: accuracy only")
    for w in warn:
        logger.info(w)
    return result


def _resolve_columns(df: Any, s: AnalysisSettings,
                     warn: list[str]) -> tuple[Any, dict[str, str | None]]:
    """Pick the age, sex and gap columns; compute the raw gap when only ages are given."""
    pd = require("pandas", "analysis", FEATURE)
    age = s.age or next((c for c in ("age_years", "chronological_age")
                         if c in df.columns and df[c].notna().any()), None)
    if s.age and s.age not in df.columns:
        raise CohortDataError(f"no column {s.age!r} (--age)")
    if age is None:
        raise CohortDataError("no chronological age: add an 'age_years' column "
                              "(e.g. from --clinical) or name it with --age")
    df = df.copy()
    df[age] = pd.to_numeric(df[age], errors="coerce")
    recomputed = df.get("age_gap", pd.Series(math.nan, index=df.index)).isna()
    df["age_gap"] = df.get("age_gap", pd.Series(math.nan, index=df.index)).where(
        ~recomputed, df["xray_age"] - df[age])
    has_corrected = ("age_gap_corrected" in df.columns
                     and df["age_gap_corrected"].notna().any())
    gap = s.gap if s.gap != "auto" else ("corrected" if has_corrected else "raw")
    if gap == "corrected" and not has_corrected:
        raise CohortDataError("--gap corrected: the predictions have no 'age_gap_corrected' "
                              "(the model card has no bias correction); use --gap raw")
    if gap == "raw":
        warn.append("using the raw gap: it falls with age (regression to the mean). Adjusted "
                    "models include age, so their coefficients are unaffected, but unadjusted "
                    "means and the Kaplan–Meier groups are confounded by age")
    sex = s.sex or next((c for c in ("sex", "sex_male") if c in df.columns), None)
    if sex is None:
        warn.append("no sex column: models are adjusted for age (and covariates) only")
    elif df[sex].isna().mean() > 0.1:
        warn.append(f"sex is missing for {df[sex].isna().mean():.0%} of images")
    missing_age = int(df[age].isna().sum())
    if missing_age:
        warn.append(f"chronological age is missing for {missing_age} images")
    return df, {"age": age, "sex": sex, "gap": GAP_COLUMNS[gap], "gap_kind": gap}


def _accuracy(df: Any, columns: dict[str, str | None], result: CohortAnalysis) -> None:
    age = df[columns["age"]]
    keep = age.notna() & df["xray_age"].notna()
    if keep.sum() < 3:
        result.warnings.append("fewer than 3 images with both ages: no accuracy block")
        return
    sex = df.loc[keep, columns["sex"]] if columns["sex"] else None
    xray_age, age_years = df.loc[keep, "xray_age"], age[keep]
    result.accuracy = age_accuracy(xray_age=xray_age, age_years=age_years, sex=sex)
    result.figures["scatter"] = plot_scatter(xray_age=xray_age, age_years=age_years)
    result.figures["bland_altman"] = plot_bland_altman(xray_age=xray_age, age_years=age_years)
