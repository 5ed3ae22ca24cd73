"""Out-of-fold predictions: the one writer of their file (folds from :mod:`xrayage.folds`).

Predictions on a model's own training images are biased (their gaps shrink towards zero),
so a cohort analysis of training data needs out-of-fold predictions: each image predicted
by a model that never saw its patient. Both ways of making them, ``xrayage crossfit``
(:func:`xrayage.train.crossfit.crossfit`, k trained models) and the ridge probe's nested
cross-fitting (:func:`xrayage.train.probe.crossfit_ridge`), assign folds with
:func:`xrayage.folds.assign_folds` and write with :func:`write_oof`: a CSV with the columns
:data:`OOF_FIELDS` (and any others the caller adds) and its provenance sidecar
(:mod:`xrayage.provenance`), which ``xrayage analyze`` and ``xrayage calibrate`` read.

This module needs numpy only (no torch).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import fit_bias_correction
from ..folds import assign_folds
from ..provenance import write_provenance

OOF_FIELDS = ("path", "patient_id", "fold", "age_years", "xray_age", "age_gap",
              "age_gap_corrected", "sex", "view")
"""The first columns of every out-of-fold CSV, in order. ``age_gap`` is ``xray_age -
age_years``; ``age_gap_corrected`` uses the age-bias correction fitted on all the file's
out-of-fold predictions (recorded in the sidecar); ``sex`` is empty when unknown."""


def write_oof(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], *,
              method: str, k: int, seed: int, fields: Sequence[str] = (),
              **details: Any) -> Path:
    """Write out-of-fold predictions and their provenance sidecar; return the CSV path.

    Parameters
    ----------
    path : path
        The CSV to write; the sidecar is ``PATH.provenance.json``.
    rows : sequence of mapping
        One per image, with at least ``path``, ``patient_id``, ``fold``, ``age_years`` and
        ``xray_age`` (None where the image got no prediction). ``age_gap`` is computed
        where missing; ``age_gap_corrected`` is always recomputed from the pooled
        correction. Lists are written ``;``-joined, None as an empty cell.
    method : str
        The function that made the predictions (recorded in the sidecar).
    k, seed : int
        Folds and the seed that assigned them (recorded in the sidecar).
    fields : sequence of str
        Further columns, written after :data:`OOF_FIELDS` (duplicates are dropped).
    **details
        Further sidecar keys (see :mod:`xrayage.provenance`).

    Returns
    -------
    Path
        `path`.
    """
    out = [dict(r) for r in rows]
    for i, r in enumerate(out):
        missing = [c for c in ("path", "patient_id", "fold", "age_years", "xray_age")
                   if c not in r]
        if missing:
            raise ValueError(f"out-of-fold row {i} lacks {missing}")
        r["age_gap_corrected"] = None
    paired = [r for r in out if _finite(r["xray_age"]) and _finite(r["age_years"])]
    for r in paired:
        if not _finite(r.get("age_gap")):
            r["age_gap"] = round(float(r["xray_age"]) - float(r["age_years"]), 2)
    correction: dict[str, Any] | None = None
    try:
        bc = fit_bias_correction(xray_age=np.array([r["xray_age"] for r in paired], float),
                                 age_years=np.array([r["age_years"] for r in paired], float))
    except ValueError:  # fewer than 3 pairs, or one age only
        bc = None
    if bc is not None:
        for r in paired:
            r["age_gap_corrected"] = round(bc.corrected_gap(
                xray_age=float(r["xray_age"]), age_years=float(r["age_years"])), 2)
        correction = {"slope": bc.slope, "intercept": bc.intercept, "n": bc.n,
                      "fitted_on": "pooled out-of-fold predictions"}
    columns = list(dict.fromkeys([*OOF_FIELDS, *fields]))
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: _cell(r.get(c)) for c in columns} for r in out)
    write_provenance(path, out_of_fold=True, patient_disjoint=True, method=method, k=k,
                     seed=seed, **details, bias_correction=correction)
    return path


def _finite(value: object) -> bool:
    """True for a finite number (not None, NaN or text)."""
    return isinstance(value, int | float | np.number) and math.isfinite(float(value))


def _cell(value: object) -> object:
    """A CSV cell: lists ``;``-joined, None empty."""
    if isinstance(value, list | tuple):
        return ";".join(map(str, value))
    return "" if value is None else value


__all__ = ["OOF_FIELDS", "assign_folds", "write_oof"]
