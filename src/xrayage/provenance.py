"""The provenance sidecar of a predictions file: were its images ever trained on?

``PRED.csv`` may have a sidecar ``PRED.csv.provenance.json`` (:data:`SIDECAR_SUFFIX`), a JSON
object saying how the predictions were made. Training code writes it
(:func:`xrayage.train.oof.write_oof`); the cohort analysis reads it
(:func:`xrayage.cohort.table.read_predictions`). Both use this module, which needs nothing
beyond the standard library, so the reader needs no training extra and the writer no
analysis extra.

The format: any JSON object; these keys have a meaning.

``out_of_fold`` : bool
    Every row was predicted by a model that never saw that row's patient (cross-fitting).
``held_out`` : bool
    No image was in the model's training set.
``patient_disjoint`` : bool
    The folds (or the hold-out) are split by patient.
``method`` : str
    The function that made the predictions, e.g. ``"xrayage.train.crossfit.crossfit"``.
``k``, ``seed`` : int
    Folds and the seed that assigned them.
``bias_correction`` : object or null
    ``slope``, ``intercept``, ``n`` and ``fitted_on`` of the age-bias correction behind the
    ``age_gap_corrected`` column.

Writers may add other keys (``folds``, ``alphas``, ``train_config``, ...).

Examples
--------
>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = write_provenance(folder / "pred.csv", out_of_fold=True, k=5)
>>> details = read_provenance(folder / "pred.csv")
>>> details["k"], provenance_status(details)
(5, 'out-of-fold')
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".provenance.json"
"""``PRED.csv`` -> ``PRED.csv.provenance.json``: how the predictions were made."""


def sidecar_path(predictions: str | os.PathLike[str]) -> Path:
    """Return the sidecar path of a predictions file (``PRED.csv.provenance.json``)."""
    return Path(os.fspath(predictions) + SIDECAR_SUFFIX)


def write_provenance(predictions: str | os.PathLike[str], *, out_of_fold: bool = False,
                     held_out: bool = False, **details: Any) -> Path:
    """Write the sidecar of `predictions`; return its path.

    Parameters
    ----------
    predictions : path
        The predictions file the sidecar describes (it need not exist yet).
    out_of_fold, held_out : bool
        See the module docstring.
    **details
        Further keys, JSON-serialisable (paths and other objects are written as strings).
    """
    path = sidecar_path(predictions)
    body = {"out_of_fold": bool(out_of_fold), "held_out": bool(held_out), **details}
    path.write_text(json.dumps(body, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def read_provenance(predictions: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of `predictions` as a dict, or None if there is none.

    Raises
    ------
    ValueError
        The sidecar is not a JSON object.
    """
    path = sidecar_path(predictions)
    if not path.is_file():
        return None
    details = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(details, dict):
        raise ValueError(f"{path}: not a JSON object")
    return details


def provenance_status(details: Mapping[str, Any] | None) -> str | None:
    """``"out-of-fold"``, ``"held-out"`` or None (the sidecar establishes neither)."""
    if not details:
        return None
    if details.get("out_of_fold"):
        return "out-of-fold"
    if details.get("held_out"):
        return "held-out"
    return None


__all__ = ["SIDECAR_SUFFIX", "provenance_status", "read_provenance", "sidecar_path",
           "write_provenance"]
