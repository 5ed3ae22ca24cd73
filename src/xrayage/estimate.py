"""The records that flow between stages: what an input is, and what the model made of it.

:class:`AgeEstimate` is the pipeline's product. It carries everything the stages knew (the
:class:`~xrayage.quality.QualityReport`, a typed :class:`InputFailure`, the model's identity,
the source's header facts), so outputs and shells format it and never recompute a stage.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ImageTooLargeError, UnsupportedFormatError, XRayAgeInputError
from .quality import QualityReport, QualityStatus
from .radiograph import Radiograph

RECORD_FIELDS = (
    "path", "xray_age", "age_interval_lower", "age_interval_upper", "age_years",
    "age_gap", "age_gap_corrected", "qc_status", "qc_reasons", "error",
)
"""Columns of a result row, in order (CSV header). ``age_years`` is the chronological age
(0.1 called the column ``chronological_age``)."""


class FailureKind(str, enum.Enum):
    """Why an input produced no estimate, as a stable code (the service maps it to HTTP)."""

    UNREADABLE = "unreadable"
    """Corrupt, truncated or empty file, or an undecodable DICOM."""
    UNSUPPORTED = "unsupported_format"
    """Neither DICOM nor an image format xrayage reads."""
    TOO_LARGE = "too_large"
    """More bytes or pixels than allowed (a possible decompression bomb)."""
    NON_FINITE = "non_finite"
    """The model's output is not a finite number."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class InputFailure:
    """A typed reason why there is no X-ray age: a :class:`FailureKind` and a sentence.

    Examples
    --------
    >>> from xrayage.errors import ImageTooLargeError
    >>> InputFailure.from_exception(ImageTooLargeError("big.png: too big")).kind.value
    'too_large'
    """

    kind: FailureKind
    message: str

    @classmethod
    def from_exception(cls, exc: XRayAgeInputError) -> InputFailure:
        """The failure of an input error raised by the read stage."""
        if isinstance(exc, ImageTooLargeError):
            kind = FailureKind.TOO_LARGE
        elif isinstance(exc, UnsupportedFormatError):
            kind = FailureKind.UNSUPPORTED
        else:
            kind = FailureKind.UNREADABLE
        return cls(kind, str(exc))

    def to_dict(self) -> dict[str, str]:
        """``{"kind": ..., "message": ...}`` (JSON-ready)."""
        return {"kind": self.kind.value, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> InputFailure:
        """Inverse of :meth:`to_dict`."""
        return cls(FailureKind(data["kind"]), data["message"])


@dataclass(frozen=True)
class SourceInfo:
    """The header facts of a source that outputs need, without its pixels.

    Attributes
    ----------
    source_format : str
        ``dicom``, ``png``, ``jpeg``, ...
    sex, view_position, modality : str or None
    study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid : str or None
    dataset : pydicom.Dataset or None
        The DICOM header without pixel data (SR and Secondary Capture copy its patient and
        study modules). Never logged.
    """

    source_format: str = "array"
    sex: str | None = None
    view_position: str | None = None
    modality: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    dataset: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, rg: Radiograph) -> SourceInfo:
        """The header facts of a decoded radiograph."""
        return cls(rg.source_format, rg.sex, rg.view_position, rg.modality,
                   rg.study_instance_uid, rg.series_instance_uid, rg.sop_instance_uid,
                   rg.sop_class_uid, rg.dataset)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made an estimate: its card's name and version, and the ONNX sha256."""

    name: str
    version: str
    sha256: str | None = None


@dataclass(frozen=True)
class AgeEstimate:
    """The X-ray age of one input, or why there is none.

    Attributes
    ----------
    path : str
        The input's label (file path as given, or a name).
    xray_age : float or None
        Predicted age in years; None if the input was rejected or unreadable.
    age_interval_lower, age_interval_upper : float or None
        The conformal interval for the chronological age of a patient with this X-ray age
        (coverage in the model card; xrayage 0.1 called them ``xray_age_lower/upper``).
    age_years : float or None
        Chronological age, from the header or the manifest.
    age_gap : float or None
        ``xray_age - age_years``.
    age_gap_corrected : float or None
        The gap corrected for regression to the mean (see
        :class:`~xrayage.card.BiasCorrection`).
    quality : QualityReport
        Every quality-check finding (empty when the input could not be read).
    failure : InputFailure or None
        Why the input could not be read or used.
    model : ModelIdentity or None
        The model that made the estimate (None when no model ran).
    source : SourceInfo or None
        The source's header facts and DICOM header (None when unreadable).
    sigma : float or None
        The model's own predicted standard deviation (Gaussian NLL models).
    heatmap : numpy.ndarray or None
        The class activation map over the square model input (years per location).
    radiograph : Radiograph or None
        The decoded input with its pixels, when asked for (``keep_radiograph=True``: the
        Secondary Capture, the HTML report and heat-map overlays draw on it).
    """

    path: str
    xray_age: float | None = None
    age_interval_lower: float | None = None
    age_interval_upper: float | None = None
    age_years: float | None = None
    age_gap: float | None = None
    age_gap_corrected: float | None = None
    quality: QualityReport = field(default_factory=QualityReport)
    failure: InputFailure | None = None
    model: ModelIdentity | None = None
    source: SourceInfo | None = field(default=None, repr=False)
    sigma: float | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    radiograph: Radiograph | None = field(default=None, repr=False)

    @property
    def qc_status(self) -> QualityStatus:
        """``error`` when the input failed, else the quality report's status."""
        return QualityStatus.ERROR if self.failure is not None else self.quality.status

    @property
    def qc_reasons(self) -> list[str]:
        """The quality-check codes, e.g. ``['view_unknown']``."""
        return self.quality.reasons

    @property
    def error(self) -> str | None:
        """The failure's message, or None."""
        return None if self.failure is None else self.failure.message

    @property
    def chronological_age(self) -> float | None:
        """Deprecated alias of :attr:`age_years`."""
        return self.age_years

    def to_record(self, decimals: int = 2) -> dict[str, Any]:
        """Return the CSV/JSON row (see :data:`RECORD_FIELDS`); never holds NaN."""
        row: dict[str, Any] = {}
        for key in RECORD_FIELDS:
            value = getattr(self, key)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, float):
                value = round(value, decimals) if math.isfinite(value) else None
            row[key] = value
        return row


__all__ = ["RECORD_FIELDS", "AgeEstimate", "FailureKind", "InputFailure", "ModelIdentity",
           "SourceInfo"]
