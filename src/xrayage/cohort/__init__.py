"""Cohort analysis of X-ray age: accuracy, gap by condition, prognosis (extra ``analysis``).

The estimators follow lifelines: settings in ``__init__``, ``fit(df, ...)`` returns
``self``, fitted attributes end in ``_``, plus ``summary``, ``print_summary`` and
``plot(ax=)``. Nothing here imports pandas, statsmodels, lifelines or matplotlib until it
is used; a missing one raises :class:`~xrayage.errors.MissingExtraError`.
"""

from __future__ import annotations

from ..errors import CohortDataError
from .accuracy import age_accuracy
from .analysis import AnalysisSettings, CohortAnalysis, analyze_cohort
from .gap_by_condition import GapByConditionFitter, adjust_pvalues
from .prognosis import GapCoxFitter
from .report import summary_dict, write_report
from .simulate import simulate_cohort
from .table import Provenance, expand_findings, merge_clinical, read_predictions

__all__ = [
    "AnalysisSettings",
    "CohortAnalysis",
    "CohortDataError",
    "GapByConditionFitter",
    "GapCoxFitter",
    "Provenance",
    "adjust_pvalues",
    "age_accuracy",
    "analyze_cohort",
    "expand_findings",
    "merge_clinical",
    "read_predictions",
    "simulate_cohort",
    "summary_dict",
    "write_report",
]
