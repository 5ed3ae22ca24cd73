"""Quality checks: may the model judge this radiograph?

Every image gets a :class:`QualityReport` with a status and the findings behind
it; nothing is dropped silently. ``reject`` means the model must not be run (or its
output must not be reported); ``warn`` means the header could not confirm what the
model assumes, so a human should check.

The checks are plain functions of a :class:`~xrayage.radiograph.Radiograph`, so a
learned check (a view classifier, say) can be appended to :data:`CHECKS`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .radiograph import Radiograph

MIN_AGE_YEARS = 18.0
"""The model is for adults: younger patients are refused when the age is known."""

MIN_SIDE_PX = 256
RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR"}
UNCERTAIN_MODALITIES = {"OT", "SC", "XC", "DOC"}
CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "LUNG", "HEART", "RIB", "PULMON", "THORAC")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL", "XTABLE LATERAL"}
FRONTAL_VIEWS = {"PA", "AP", "APS", "PAS", "APL", "PAL", "AP SUPINE", "AP ERECT"}


class QualityStatus(str, enum.Enum):
    """Overall verdict, ordered ok < warn < reject < error.

    ``error`` is never a check's finding: it is the status of an input that could not be
    read at all (see :attr:`xrayage.estimate.AgeEstimate.qc_status`).
    """

    OK = "ok"
    WARN = "warn"
    REJECT = "reject"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        """0 for ok, 1 for warn, 2 for reject, 3 for error."""
        return ("ok", "warn", "reject", "error").index(self.value)


@dataclass(frozen=True)
class QualityFinding:
    """One reason behind a verdict: a stable ``code``, a sentence for people, and the score
    of a learned check (a probability or a distance; None for rules)."""

    code: str
    status: QualityStatus
    message: str
    score: float | None = None


@dataclass(frozen=True)
class QualityReport:
    """The result of :func:`check_quality`.

    Attributes
    ----------
    findings : list of QualityFinding
        Every warning and refusal, in check order.
    """

    findings: list[QualityFinding] = field(default_factory=list)

    @property
    def status(self) -> QualityStatus:
        """The worst status among the findings (``ok`` if none)."""
        return max(
            (f.status for f in self.findings), key=lambda s: s.rank, default=QualityStatus.OK
        )

    @property
    def reasons(self) -> list[str]:
        """The finding codes, e.g. ``['lateral_view']``."""
        return [f.code for f in self.findings]

    @property
    def messages(self) -> list[str]:
        """One sentence per finding."""
        return [f.message for f in self.findings]

    @property
    def accepted(self) -> bool:
        """True unless the status is ``reject``."""
        return self.status is not QualityStatus.REJECT

    def to_dict(self) -> list[dict[str, Any]]:
        """The findings as JSON-ready ``{"code", "status", "message", "score"}`` objects."""
        return [{"code": f.code, "status": f.status.value, "message": f.message,
                 "score": f.score} for f in self.findings]

    @classmethod
    def from_dict(cls, data: list[dict[str, Any]]) -> QualityReport:
        """Inverse of :meth:`to_dict`."""
        return cls([QualityFinding(d["code"], QualityStatus(d["status"]), d["message"],
                                   d.get("score")) for d in data])

    def relaxed(self, allow: Iterable[str]) -> QualityReport:
        """The report with the refusals whose codes are in `allow` turned into warnings.

        Examples
        --------
        >>> r = QualityReport([QualityFinding("lateral_view", QualityStatus.REJECT, "lateral")])
        >>> r.relaxed({"lateral_view"}).status.value
        'warn'
        """
        allowed = set(allow)
        if not allowed:
            return self
        return QualityReport([
            replace(f, status=_WARN, message=f"{f.message} (allowed by the user)")
            if f.status is _REJECT and f.code in allowed else f for f in self.findings])

    def extended(self, findings: Iterable[QualityFinding]) -> QualityReport:
        """The report with more findings appended."""
        return QualityReport([*self.findings, *findings])


Check = Callable[[Radiograph], Iterator[QualityFinding]]

_REJECT, _WARN = QualityStatus.REJECT, QualityStatus.WARN


def check_header(rg: Radiograph) -> Iterator[QualityFinding]:
    """Modality, body part, view and frames as stated in the header."""
    if rg.modality is None:
        if rg.source_format == "dicom":
            yield QualityFinding("modality_unknown", _WARN, "DICOM has no Modality")
    elif rg.modality in UNCERTAIN_MODALITIES:
        yield QualityFinding(
            "modality_uncertain", _WARN, f"Modality {rg.modality} may not be an original radiograph"
        )
    elif rg.modality not in RADIOGRAPH_MODALITIES:
        yield QualityFinding(
            "not_radiograph", _REJECT, f"Modality {rg.modality} is not a projection radiograph"
        )
    if rg.body_part_examined is None:
        if rg.source_format == "dicom":
            yield QualityFinding("body_part_unknown", _WARN, "DICOM has no BodyPartExamined")
    elif not any(word in rg.body_part_examined for word in CHEST_WORDS):
        yield QualityFinding(
            "not_chest", _REJECT, f"BodyPartExamined {rg.body_part_examined} is not the chest"
        )
    view = rg.view_position
    if view is None:
        yield QualityFinding(
            "view_unknown", _WARN, "view position unknown: check that the image is frontal"
        )
    elif view in LATERAL_VIEWS or view.startswith("LAT"):
        yield QualityFinding(
            "lateral_view",
            _REJECT,
            f"view {view} is lateral; the model reads frontal (PA/AP) views",
        )
    elif view not in FRONTAL_VIEWS:
        yield QualityFinding("view_uncertain", _WARN, f"view {view} is not a standard PA/AP view")
    if rg.number_of_frames > 1:
        yield QualityFinding(
            "multi_frame", _REJECT, f"{rg.number_of_frames} frames; expected a single radiograph"
        )


def check_age(rg: Radiograph) -> Iterator[QualityFinding]:
    """Adults only; an unknown age is allowed but no gap can be computed."""
    if rg.age_years is None:
        yield QualityFinding(
            "age_unknown", _WARN, "chronological age unknown: no age gap can be computed"
        )
    elif rg.age_years < MIN_AGE_YEARS:
        yield QualityFinding(
            "child",
            _REJECT,
            f"age {rg.age_years:.1f} y is under {MIN_AGE_YEARS:.0f}: the model is for adults",
        )
    elif rg.age_years > 110:
        yield QualityFinding("age_implausible", _WARN, f"age {rg.age_years:.1f} y is implausible")


def check_pixels(rg: Radiograph) -> Iterator[QualityFinding]:
    """Size, aspect, contrast and colour of the decoded image."""
    rows, cols = rg.pixels.shape
    if min(rows, cols) < MIN_SIDE_PX:
        yield QualityFinding(
            "too_small", _REJECT, f"{rows}x{cols} pixels; at least {MIN_SIDE_PX} px per side needed"
        )
    elif max(rows, cols) / min(rows, cols) > 2.0:
        yield QualityFinding(
            "aspect_ratio",
            _WARN,
            f"aspect ratio {max(rows, cols) / min(rows, cols):.1f} is unusual "
            "for a chest radiograph",
        )
    step = max(1, int(np.sqrt(rows * cols / 250_000)))
    sample = rg.pixels[::step, ::step]
    lo, hi = np.percentile(sample, (1, 99))
    if float(sample.std()) < 0.02 or hi - lo < 0.05:
        yield QualityFinding("blank", _REJECT, "image is nearly constant (empty or saturated)")
    if rg.colour_fraction > 0.002:
        yield QualityFinding(
            "colour",
            _WARN,
            f"{100 * rg.colour_fraction:.1f}% of pixels are coloured "
            "(annotations or a photograph?)",
        )


CHECKS: list[Check] = [check_header, check_age, check_pixels]
"""The checks run by :func:`check_quality`, in order."""

IMAGE_CHECKS: list[Check] = [check_header, check_pixels]
"""The checks of the image alone, without the patient's age (the training cache runs these:
which ages to train on is the dataset filter's business)."""


def check_quality(rg: Radiograph, checks: list[Check] | None = None) -> QualityReport:
    """Run the quality checks on a radiograph.

    Parameters
    ----------
    rg : Radiograph
    checks : list of callables, optional
        Defaults to :data:`CHECKS`; an empty list runs none.

    Returns
    -------
    QualityReport

    Examples
    --------
    >>> import numpy as np
    >>> rg = Radiograph(np.random.default_rng(0).random((512, 512), np.float32),
    ...                 age_years=12.0, view_position="PA")
    >>> check_quality(rg).status.value, check_quality(rg).reasons
    ('reject', ['child'])
    """
    return QualityReport([f for check in (CHECKS if checks is None else checks)
                          for f in check(rg)])
