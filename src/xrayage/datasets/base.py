"""The dataset record shared by every adapter, and the standard filters."""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FRONTAL_VIEWS = frozenset({"PA", "AP"})
"""View codes counted as frontal. Adapters map their own codes onto ``PA``/``AP``/``LATERAL``."""


@dataclass(frozen=True)
class Sample:
    """One radiograph with its chronological age.

    Attributes
    ----------
    path : pathlib.Path
        Image file (DICOM, PNG or JPEG).
    age_years : float
        Chronological age at the study, in years.
    sex : {'M', 'F'} or None
        None when unknown (as everywhere in xrayage; CSV writers write an empty cell).
    view : str
        ``"PA"``, ``"AP"``, ``"LATERAL"`` or ``""`` (unknown).
    patient_id : str
        Source-prefixed patient identifier (``"nih:123"``); splits are by patient.
    findings : tuple of str
        Labels the source gives (``("No Finding",)`` where it says so).
    source : str
        Dataset name, e.g. ``"nih_cxr14"``.
    """

    path: Path
    age_years: float
    sex: str | None = None
    view: str = ""
    patient_id: str = ""
    findings: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    def __post_init__(self) -> None:
        if not math.isfinite(self.age_years):
            raise ValueError(f"{self.path}: age_years must be finite")


def filter_samples(
    samples: Iterable[Sample],
    *,
    frontal_only: bool = True,
    adults_only: bool = False,
    age_range: tuple[float, float] | None = None,
    keep_unknown_view: bool = True,
) -> list[Sample]:
    """Keep the samples a model should train or be evaluated on.

    Parameters
    ----------
    samples : iterable of Sample
    frontal_only : bool
        Drop lateral views (and any view code other than PA/AP).
    adults_only : bool
        Keep ages >= 18 only.
    age_range : (float, float), optional
        Inclusive ``(min, max)`` age in years.
    keep_unknown_view : bool
        With `frontal_only`, keep samples whose view is unknown (``""``).

    Returns
    -------
    list of Sample

    Examples
    --------
    >>> s = [Sample(Path("a.png"), 12.0, view="PA"), Sample(Path("b.png"), 40.0, view="LATERAL")]
    >>> [x.path.name for x in filter_samples(s)]
    ['a.png']
    >>> filter_samples(s, adults_only=True)
    []
    """
    out = []
    for s in samples:
        if frontal_only and s.view not in FRONTAL_VIEWS and not (keep_unknown_view and not s.view):
            continue
        if adults_only and s.age_years < 18:
            continue
        if age_range is not None and not age_range[0] <= s.age_years <= age_range[1]:
            continue
        out.append(s)
    return out


def read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """Yield the rows of a CSV file, gzip-compressed or not, as dicts of strings."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    yield from csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))


def require_columns(row: dict[str, str], columns: Iterable[str], path: Path) -> None:
    """Raise ValueError naming the file if `row` lacks any of `columns`."""
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; is this the right table?")


def parse_float(value: str | None) -> float | None:
    """Parse a float, returning None for empty or invalid text."""
    try:
        out = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) else None


def normalise_sex(value: str | None) -> str | None:
    """Map ``M/Male/F/Female`` (any case) to ``"M"``/``"F"``, anything else to None (unknown).

    Examples
    --------
    >>> normalise_sex(" female"), normalise_sex("O"), normalise_sex(None)
    ('F', None, None)
    """
    v = (value or "").strip().upper()
    return v[0] if v in ("M", "F", "MALE", "FEMALE") else None


def normalise_view(value: str | None) -> str:
    """Map view codes (``PA``, ``AP``, ``AP AXIAL``, ``LL``, ``LATERAL``, ...) to PA/AP/LATERAL."""
    v = (value or "").strip().upper().replace("_", " ")
    if v.startswith("PA"):
        return "PA"
    if v.startswith("AP"):
        return "AP"
    if v in ("LL", "RL", "LAO", "RAO", "LATERAL", "LAT", "L", "LLD", "RLD") or "LAT" in v:
        return "LATERAL"
    return ""
