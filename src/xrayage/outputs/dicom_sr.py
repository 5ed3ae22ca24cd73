"""DICOM Structured Report: a TID 1500 Measurement Report of the X-ray age (IHE AI Results).

The report is a Comprehensive 3D SR in the source image's study, in a new series.
Its content tree is::

    Imaging Measurement Report (TID 1500)
      Language, observer context: device = the model (name, version)
      Procedure reported: Imaging procedure
      Image Library: the source radiograph
      Imaging Measurements
        Measurement Group (TID 1501)
          Tracking identifier and UID, Finding: Radiographic age assessment (99XRAYAGE)
          Algorithm name/version, Finding site: Chest, Source image: the radiograph
          Radiographic age                          (99XRAYAGE XRA001, UCUM a)
          Age interval given radiographic age, lower limit  (XRA006)
          Age interval given radiographic age, upper limit  (XRA007)
          Age                                       (LOINC 30525-0, chronological)
          Radiographic age gap                      (XRA004)
          Radiographic age gap, bias corrected      (XRA005)

No standard code exists for a radiographic age, so the concepts use the private
coding scheme :data:`CODING_SCHEME`, declared in the Coding Scheme Identification
Sequence of every report (see ``docs/clinical-outputs.md``).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ..card import ModelCard
from ..estimate import AgeEstimate
from ..extras import require
from ._common import (
    MANUFACTURER,
    ClinicalOutputError,
    coverage,
    fix_patient_age,
    quiet_person_names,
    require_age,
    require_dicom,
    software_label,
)

if TYPE_CHECKING:
    import highdicom as hd

FEATURE = "DICOM SR"

CODING_SCHEME = "99XRAYAGE"
"""Private coding scheme designator of the xrayage concepts."""

CODING_SCHEME_NAME = "xrayage radiographic age concepts"

FINDING = Code("XRA000", CODING_SCHEME, "Radiographic age assessment")
XRAY_AGE = Code("XRA001", CODING_SCHEME, "Radiographic age")
AGE_INTERVAL_LOWER = Code("XRA006", CODING_SCHEME,
                          "Age interval given radiographic age, lower limit")
AGE_INTERVAL_UPPER = Code("XRA007", CODING_SCHEME,
                          "Age interval given radiographic age, upper limit")
LEGACY_INTERVAL = {"age_interval_lower": Code("XRA002", CODING_SCHEME,
                                              "Radiographic age, lower prediction limit"),
                   "age_interval_upper": Code("XRA003", CODING_SCHEME,
                                              "Radiographic age, upper prediction limit")}
"""The codes earlier versions wrote for the same interval under a misleading name; still read."""
AGE_GAP = Code("XRA004", CODING_SCHEME, "Radiographic age gap")
AGE_GAP_CORRECTED = Code("XRA005", CODING_SCHEME, "Radiographic age gap, bias corrected")
CHRONOLOGICAL_AGE = Code("30525-0", "LN", "Age")
YEARS = Code("a", "UCUM", "year")
PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
CHEST = Code("816094009", "SCT", "Chest")

ALGORITHM_NAME, ALGORITHM_VERSION = "111001", "111003"  # DCM codes of TID 4019

SR_SERIES_NUMBER = 9901
"""Series number of the SR series (a new series in the source study)."""

_FIELDS = {
    "xray_age": XRAY_AGE,
    "age_interval_lower": AGE_INTERVAL_LOWER,
    "age_interval_upper": AGE_INTERVAL_UPPER,
    "age_years": CHRONOLOGICAL_AGE,
    "age_gap": AGE_GAP,
    "age_gap_corrected": AGE_GAP_CORRECTED,
}


@dataclass(frozen=True)
class SRValues:
    """The values read back from an X-ray age SR by :func:`read_dicom_sr` (years).

    Attributes
    ----------
    xray_age, age_interval_lower, age_interval_upper, age_years, age_gap, age_gap_corrected
        float or None (``age_years`` is the chronological age) (None when absent from the report).
    algorithm_name, algorithm_version : str
    source_sop_instance_uid : str
        The radiograph the measurements were made on.
    """

    xray_age: float | None
    age_interval_lower: float | None
    age_interval_upper: float | None
    age_years: float | None
    age_gap: float | None
    age_gap_corrected: float | None
    algorithm_name: str
    algorithm_version: str
    source_sop_instance_uid: str


def to_dicom_sr(estimate: AgeEstimate, card: ModelCard, *, series_number: int = SR_SERIES_NUMBER,
                decimals: int = 2) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Measurement Report of one estimate.

    Parameters
    ----------
    estimate : AgeEstimate
        With an X-ray age, of a DICOM source (its header travels in
        :attr:`~xrayage.estimate.AgeEstimate.source`).
    card : ModelCard
        The model that made the estimate (algorithm name and version).
    series_number : int
        Series Number of the new SR series.
    decimals : int
        Values are rounded to this many decimals (years).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        A pydicom Dataset; patient and study modules copied from the source.

    Raises
    ------
    ClinicalOutputError
        No X-ray age (rejected or unreadable input), or the source is not DICOM.
    MissingExtraError
        highdicom is not installed.
    """
    hd = require("highdicom", "clinical", FEATURE)
    require_age(estimate, FEATURE)
    source = require_dicom(estimate, FEATURE)
    sr_module = hd.sr
    algorithm = sr_module.AlgorithmIdentification(
        name=card.name, version=card.version, parameters=_parameters(card),
        manufacturer=MANUFACTURER)
    measurements = [
        sr_module.Measurement(name=code, value=round(float(value), decimals), unit=YEARS)
        for field, code in _FIELDS.items()
        if (value := getattr(estimate, field)) is not None
    ]
    source_image = sr_module.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID)
    group = sr_module.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=sr_module.TrackingIdentifier(uid=generate_uid(),
                                                         identifier="X-ray age"),
        finding_type=FINDING, algorithm_id=algorithm,
        finding_sites=[sr_module.FindingSite(anatomic_location=CHEST)],
        source_images=[source_image], measurements=measurements)
    device = sr_module.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=sr_module.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(card), name=card.name, manufacturer_name=MANUFACTURER,
            model_name=f"{card.name} {card.version}"))
    report = sr_module.MeasurementReport(
        observation_context=sr_module.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE, imaging_measurements=[group],
        referenced_images=[_library_entry(source)])
    with quiet_person_names():
        sr = sr_module.Comprehensive3DSR(
            evidence=[source], content=report, series_instance_uid=generate_uid(),
            series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description="X-ray age (research, not for diagnostic use)",
            software_versions=software_label())
    _declare_coding_scheme(sr)
    fix_patient_age(sr, source)
    now = _dt.datetime.now()
    sr.SeriesDate, sr.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return sr


def write_dicom_sr(estimate: AgeEstimate, card: ModelCard, path: str | Path,
                   **kwargs: Any) -> Path:
    """Write :func:`to_dicom_sr` as a DICOM Part 10 file and return its path."""
    path = Path(path)
    to_dicom_sr(estimate, card, **kwargs).save_as(path, enforce_file_format=True)
    return path


def read_dicom_sr(source: str | Path | Dataset) -> SRValues:
    """Read the X-ray age values back from an SR written by :func:`write_dicom_sr`.

    Parameters
    ----------
    source : path or pydicom.Dataset

    Returns
    -------
    SRValues

    Raises
    ------
    ClinicalOutputError
        The SR holds no X-ray age measurement group.
    """
    hd = require("highdicom", "clinical", FEATURE)
    sr = (hd.sr.srread(source) if not isinstance(source, Dataset)
          else hd.sr.Comprehensive3DSR.from_dataset(source, copy=True))
    groups = sr.content.get_image_measurement_groups(finding_type=FINDING)
    if not groups:
        raise ClinicalOutputError("SR holds no radiographic age measurement group")
    group = groups[0]
    values: dict[str, float | None] = {}
    for field, code in _FIELDS.items():
        found = group.get_measurements(name=code)
        if not found and field in LEGACY_INTERVAL:
            found = group.get_measurements(name=LEGACY_INTERVAL[field])
        values[field] = float(found[0].value) if found else None
    texts = {str(item.ConceptNameCodeSequence[0].CodeValue): str(item.TextValue)
             for item in group[0].ContentSequence if item.ValueType == "TEXT"}
    images = group.source_images
    return SRValues(
        **values,
        algorithm_name=texts.get(ALGORITHM_NAME, ""),
        algorithm_version=texts.get(ALGORITHM_VERSION, ""),
        source_sop_instance_uid=str(images[0].referenced_sop_instance_uid) if images else "",
    )


def _parameters(card: ModelCard) -> list[str]:
    params = [f"architecture={card.architecture}"]
    cov = coverage(card)
    if cov is not None:
        params.append(f"prediction_interval_coverage={cov:g}")
    if card.onnx_sha256:
        params.append(f"onnx_sha256={card.onnx_sha256}")
    return params


def _library_entry(source: Dataset) -> Dataset:
    """The header for the Image Library entry (TID 1601).

    highdicom adds the projection-radiography descriptors (TID 1603) whenever the
    Modality is CR/DX/..., and needs PatientOrientation and ImagerPixelSpacing for
    them; many real radiographs lack one. Then a copy with an empty Modality is
    passed, so only the generic descriptors are written (the coded Modality
    descriptor comes from the SOP Class, not from this attribute).
    """
    orientation = source.get("PatientOrientation")
    complete = (orientation is not None and len(orientation) == 2
                and source.get("ImagerPixelSpacing") is not None)
    if complete:
        return source
    entry = Dataset()
    entry.update(source)
    entry.Modality = ""
    return entry


def _device_uid(card: ModelCard) -> str:
    """A UID stable for one model (name, version and weights hash)."""
    return generate_uid(entropy_srcs=["xrayage", card.name, card.version, card.onnx_sha256 or ""])


def _declare_coding_scheme(sr: Dataset) -> None:
    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = CODING_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "xrayage developers"
    sr.CodingSchemeIdentificationSequence = [item]
