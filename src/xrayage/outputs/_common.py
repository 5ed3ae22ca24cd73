"""Helpers shared by the clinical outputs: errors, lazy imports, labels and file names."""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..card import ModelCard
from ..dicom import parse_patient_age
from ..errors import ClinicalOutputError as ClinicalOutputError  # re-exported (was defined here)
from ..estimate import AgeEstimate
from ..radiograph import Radiograph

MANUFACTURER = "xrayage"
"""Manufacturer written into DICOM objects and FHIR device names."""

DISCLAIMER = "NOT FOR DIAGNOSTIC USE - research software, not a medical device"
"""Shown on every human-readable output."""


def require_age(estimate: AgeEstimate, output: str) -> float:
    """Return the X-ray age, or raise if the input was rejected or unreadable."""
    if estimate.xray_age is None:
        why = estimate.error or f"quality check {estimate.qc_status}"
        if estimate.qc_reasons:
            why += f" ({', '.join(estimate.qc_reasons)})"
        raise ClinicalOutputError(f"{_label(estimate)}: no {output}: no X-ray age ({why})")
    return estimate.xray_age


def require_radiograph(estimate: AgeEstimate, output: str) -> Radiograph:
    """Return the kept radiograph (``predict_many(..., keep_radiograph=True)``)."""
    if estimate.radiograph is None:
        raise ClinicalOutputError(
            f"{_label(estimate)}: no {output}: the estimate holds no radiograph; "
            "predict with keep_radiograph=True"
        )
    return estimate.radiograph


def require_dicom(estimate: AgeEstimate, output: str) -> Any:
    """Return the source DICOM header, or raise if the input was not DICOM."""
    src = estimate.source
    if src is None:
        raise ClinicalOutputError(f"{_label(estimate)}: no {output}: the input was not read")
    ds = src.dataset
    if src.source_format != "dicom" or ds is None:
        raise ClinicalOutputError(
            f"{_label(estimate)}: no {output}: the input is {src.source_format.upper()}, "
            "not DICOM; DICOM outputs need a DICOM source (its patient, study and UIDs)"
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not ds.get(keyword):
            raise ClinicalOutputError(f"{_label(estimate)}: no {output}: source lacks {keyword}")
    missing = [k for k in TYPE2_PATIENT_STUDY if k not in ds]
    if missing:  # outputs copy these Type 2 attributes; real sources often omit some
        ds = ds.copy()
        for keyword in missing:
            setattr(ds, keyword, "")
    return ds


TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
"""Type 2 attributes of the Patient and General Study modules that derived objects copy."""


@contextlib.contextmanager
def quiet_person_names() -> Iterator[None]:
    """Silence highdicom's person-name warnings: their text quotes the patient's name."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        yield


def fix_patient_age(target: Any, source: Any) -> None:
    """Copy PatientAge as a valid AS value (``062Y``), or drop it.

    Sources often write a bare number (``62``); DICOM wants ``nnnD/W/M/Y``.
    """
    value = str(source.get("PatientAge") or "").strip().upper()
    if _AS.match(value):
        target.PatientAge = value
        return
    years = parse_patient_age(value)
    if years is not None and years < 1000:
        target.PatientAge = f"{round(years):03d}Y"
    elif "PatientAge" in target:
        del target.PatientAge


_AS = re.compile(r"^\d{3}[DWMY]$")


def model_label(card: ModelCard) -> str:
    """``name version`` of the model, as written into every output."""
    return f"{card.name} {card.version}"


def software_label() -> str:
    """``xrayage <version>``."""
    return f"{MANUFACTURER} {__version__}"


def coverage(card: ModelCard) -> float | None:
    """Nominal coverage of the prediction interval, or None without calibration."""
    return None if card.conformal is None else float(card.conformal.coverage)


def output_name(path: str, suffix: str) -> str:
    """A collision-free file name for an input path: ``<stem>-<sha1[:8]><suffix>``.

    Examples
    --------
    >>> output_name("in/a/IM0001.dcm", ".sr.dcm")
    'IM0001-c8efbdee.sr.dcm'
    """
    digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:8]
    return f"{Path(path).stem}-{digest}{suffix}"


def _label(estimate: AgeEstimate) -> str:
    return estimate.path
