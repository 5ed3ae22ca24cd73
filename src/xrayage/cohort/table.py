"""Read predictions, join a clinical table, and shape columns for the cohort models.

Every function takes and returns a :class:`pandas.DataFrame` and raises
:class:`CohortDataError` (a ``ValueError``) naming the column when the data cannot be used.
This module only reads what training wrote (the predictions and their provenance sidecar,
:mod:`xrayage.provenance`); it imports nothing from :mod:`xrayage.train`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

from ..errors import CohortDataError, XRayAgeDeprecationWarning
from ..extras import require
from ..provenance import SIDECAR_SUFFIX as SIDECAR_SUFFIX  # re-exported (it was defined here)
from ..provenance import provenance_status, read_provenance, sidecar_path
from ._deps import FEATURE

LEGACY_AGE_COLUMN = "chronological_age"
"""The name of ``age_years`` in prediction files before 0.2; still read, with a warning."""

_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}
_MALE = {"m", "male", "man", "1", "1.0"}
_FEMALE = {"f", "female", "woman", "0", "0.0"}


@dataclass
class Provenance:
    """Whether the predictions come from images the model never trained on.

    Attributes
    ----------
    status : {'out-of-fold', 'held-out', 'declared-held-out', 'unverified'}
        ``out-of-fold``: made by ``xrayage crossfit`` or a ridge build (their provenance
        sidecar says so), or a ``fold`` column with ``--predictions-held-out`` (a column
        named ``fold`` alone proves nothing);
        ``held-out``: the sidecar says the images were not in the training set;
        ``declared-held-out``: the user said so (``--predictions-held-out``);
        ``unverified``: nothing says so, and the results may be biased.
    source : str
        What established the status.
    n_in_sample_dropped : int
        Rows flagged ``in_sample`` and removed.
    n_in_sample_kept : int
        Rows flagged ``in_sample`` and kept because in-sample use was allowed.
    details : dict
        The sidecar's contents, if any.
    """

    status: str = "unverified"
    source: str = "nothing marks these predictions as held out"
    n_in_sample_dropped: int = 0
    n_in_sample_kept: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def correction_in_sample(self) -> bool:
        """True when the sidecar's bias correction was fitted on these same predictions."""
        bc = self.details.get("bias_correction") if self.details else None
        if not isinstance(bc, dict):
            return False
        return "out-of-fold" in str(bc.get("fitted_on", ""))

    @property
    def trusted(self) -> bool:
        """True when the predictions are known (or declared) to be out-of-sample."""
        return self.status != "unverified" and self.n_in_sample_kept == 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (with ``trusted``)."""
        return {**asdict(self), "trusted": self.trusted}


def read_table(path: str | Path) -> Any:
    """Read a CSV, TSV or JSON-lines file into a DataFrame (strings kept as strings)."""
    pd = require("pandas", "analysis", FEATURE)
    path = Path(path)
    if not path.is_file():
        raise CohortDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_csv(path, sep="\t" if suffix in (".tsv", ".tab") else ",", low_memory=False)


def read_predictions(
    path: str | Path, *, held_out: bool = False, allow_in_sample: bool = False
) -> tuple[Any, Provenance]:
    """Read ``xrayage predict`` output and establish where its predictions come from.

    Parameters
    ----------
    path : str or Path
        CSV or JSON lines with at least ``path`` and ``xray_age`` (see
        :data:`xrayage.predict.RECORD_FIELDS`). A legacy ``chronological_age`` column is
        read as ``age_years`` (filling its gaps if both are present) and then dropped.
    held_out : bool
        The user states that no image was in the model's training set.
    allow_in_sample : bool
        Keep rows flagged ``in_sample`` (otherwise they are dropped).

    Returns
    -------
    (DataFrame, Provenance)

    Raises
    ------
    CohortDataError
        Missing ``xray_age`` column, an unreadable sidecar, or no usable row.

    Warns
    -----
    XRayAgeDeprecationWarning
        The file names the chronological age ``chronological_age`` (before 0.2).
    """
    df = read_table(path)
    if "xray_age" not in df.columns:
        raise CohortDataError(f"{path}: no 'xray_age' column; is this `xrayage predict` output?")
    df = _legacy_age_column(df, path)
    prov = Provenance()
    try:
        details = read_provenance(path)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise CohortDataError(f"{sidecar_path(path)}: unreadable provenance sidecar "
                              f"({exc})") from exc
    if details is not None:
        prov.details = details
        status = provenance_status(details)
        if status is not None:
            prov.status, prov.source = status, f"sidecar {sidecar_path(path).name}"
    if prov.status == "unverified" and held_out:
        prov.status, prov.source = "declared-held-out", "--predictions-held-out"
        if "fold" in df.columns and df["fold"].notna().all():
            prov.status = "out-of-fold"
            prov.source = "'fold' column with --predictions-held-out"
    elif prov.status == "unverified" and "fold" in df.columns:
        prov.source = ("a 'fold' column but no provenance sidecar: a column name proves "
                       "nothing (pass --predictions-held-out if these are out-of-fold)")
    if "in_sample" in df.columns:
        flagged = to_binary(df["in_sample"], "in_sample").fillna(1).astype(bool)
        if allow_in_sample:
            prov.n_in_sample_kept = int(flagged.sum())
        else:
            prov.n_in_sample_dropped = int(flagged.sum())
            df = df.loc[~flagged]
    if len(df) == 0:
        raise CohortDataError(f"{path}: no rows left (all flagged in_sample?)")
    return df.reset_index(drop=True), prov


def _legacy_age_column(df: Any, path: str | Path) -> Any:
    """Read a legacy ``chronological_age`` column as ``age_years``, with a warning."""
    if LEGACY_AGE_COLUMN not in df.columns:
        return df
    warnings.warn(f"{path}: the column {LEGACY_AGE_COLUMN!r} is read as 'age_years', its name "
                  "since xrayage 0.2; rename it, as the old name will stop being read",
                  XRayAgeDeprecationWarning, stacklevel=3)
    df = df.copy()
    legacy = df.pop(LEGACY_AGE_COLUMN)
    df["age_years"] = df["age_years"].fillna(legacy) if "age_years" in df.columns else legacy
    return df


def merge_clinical(predictions: Any, clinical: Any, on: str) -> tuple[Any, dict[str, int]]:
    """Join a clinical table to the predictions, one row per prediction.

    The clinical key `on` is matched against the predictions' column of that name if it
    has one, else against their ``path``: whole, by its longest trailing part that is a
    clinical key (so ``images/x.png`` matches ``/data/images/x.png``; the file name is the
    shortest such part), or by the file name without extension. The variant that matches
    most rows wins.

    Returns
    -------
    (DataFrame, dict)
        The inner join and counts ``n_predictions``, ``n_clinical``, ``n_matched``.

    Raises
    ------
    CohortDataError
        `on` missing from the clinical table, duplicated keys, or nothing matched.
    """
    if on not in clinical.columns:
        raise CohortDataError(f"clinical table has no column {on!r} (--on); "
                              f"columns: {', '.join(map(str, clinical.columns))}")
    clinical = clinical.copy()
    clinical[on] = clinical[on].astype(str)
    if clinical[on].duplicated().any():
        dup = clinical.loc[clinical[on].duplicated(), on].iloc[0]
        raise CohortDataError(f"clinical table: key {dup!r} appears more than once in {on!r}; "
                              "keep one row per image")
    pred = predictions.copy()
    column = on if on in pred.columns else "path"
    if column not in pred.columns:
        raise CohortDataError(f"predictions have neither {on!r} nor 'path' to join on")
    keys = set(clinical[on])
    values = pred[column].astype(str)
    pred["_key"] = max(
        (values, values.map(lambda v: _trailing_key(v, keys)),
         values.map(lambda v: PurePath(v).stem)),
        key=lambda k: int(k.isin(keys).sum()),
    )
    clinical = clinical.rename(columns={on: "_key"})
    overlap = [c for c in clinical.columns if c in pred.columns and c != "_key"]
    merged = pred.merge(clinical.drop(columns=overlap), on="_key", how="inner")
    merged = merged.rename(columns={"_key": on}) if on not in merged.columns else merged
    counts = {"n_predictions": len(pred), "n_clinical": len(clinical), "n_matched": len(merged)}
    if len(merged) == 0:
        raise CohortDataError(f"no prediction matched the clinical table on {on!r} "
                              "(tried the value, its trailing path parts and its stem)")
    return merged.drop(columns=["_key"], errors="ignore"), counts


def _trailing_key(path: str, keys: set[str]) -> str | None:
    """The longest trailing part of `path` (``a/b/c``, ``b/c``, ``c``) that is in `keys`."""
    parts = PurePath(path).parts
    return next((k for i in range(len(parts))
                 if (k := PurePath(*parts[i:]).as_posix()) in keys), None)


def expand_findings(df: Any, column: str, sep: str = "|",
                    prefix: str = "") -> tuple[Any, list[str]]:
    """Add one 0/1 column per label of a pipe-separated findings column.

    Column names are the labels made safe (``Pleural_Thickening`` -> ``pleural_thickening``)
    with `prefix`. Missing cells stay missing in every new column.

    Examples
    --------
    >>> import pandas as pd
    >>> out, cols = expand_findings(pd.DataFrame({"f": ["Effusion|Mass", "No Finding"]}), "f")
    >>> cols, out["effusion"].tolist()
    (['effusion', 'mass', 'no_finding'], [1.0, 0.0])
    """
    if column not in df.columns:
        raise CohortDataError(f"no column {column!r} to expand (--expand-findings)")
    cells = df[column].where(df[column].notna(), None)
    labels = sorted({lab.strip() for v in cells.dropna() for lab in str(v).split(sep)
                     if lab.strip()})
    out = df.copy()
    names = []
    for lab in labels:
        name = prefix + (re.sub(r"[^0-9a-z]+", "_", lab.lower()).strip("_") or "label")
        out[name] = cells.map(
            lambda v, lab=lab: None if v is None
            else float(lab in {s.strip() for s in str(v).split(sep)})
        ).astype(float)
        names.append(name)
    return out, names


def to_binary(values: Any, name: str) -> Any:
    """Coerce a column to 0/1 floats (NaN kept); accepts 0/1, true/false, yes/no.

    Raises
    ------
    CohortDataError
        Any other value, or fewer than two levels.
    """
    pd = require("pandas", "analysis", FEATURE)
    text = values.map(lambda v: None if pd.isna(v) else str(v).strip().lower())
    bad = sorted({v for v in text.dropna() if v not in _TRUE | _FALSE})
    if bad:
        raise CohortDataError(f"column {name!r} is not binary: values {bad[:5]} are not 0/1, "
                              "true/false or yes/no (use --expand-findings for label lists)")
    return text.map(lambda v: None if v is None else float(v in _TRUE)).astype(float)


def sex_male(values: Any, name: str = "sex") -> Any:
    """Code sex as 1 male, 0 female, NaN unknown (M/F, male/female, 1/0)."""
    pd = require("pandas", "analysis", FEATURE)
    text = values.map(lambda v: None if pd.isna(v) or str(v).strip() == ""
                      else str(v).strip().lower())
    bad = sorted({v for v in text.dropna() if v not in _MALE | _FEMALE})
    if bad:
        raise CohortDataError(f"column {name!r}: cannot read sex from {bad[:5]}; use M/F or 1/0")
    return text.map(lambda v: None if v is None else float(v in _MALE)).astype(float)


def design(df: Any, columns: list[str]) -> Any:
    """Numeric design columns: numbers kept, text/categorical one-hot (first level dropped)."""
    pd = require("pandas", "analysis", FEATURE)
    parts = []
    for col in columns:
        if col not in df.columns:
            raise CohortDataError(f"no column {col!r} (--covariates)")
        series = df[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            parts.append(series.astype(float).rename(col))
        else:
            levels = series.astype("string")
            dummies = pd.get_dummies(levels, prefix=col, drop_first=True, dtype=float)
            dummies.loc[levels.isna()] = float("nan")
            parts.append(dummies)
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=df.index)
