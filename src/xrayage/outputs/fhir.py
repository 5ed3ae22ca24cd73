"""FHIR R4 Observation of the X-ray age (and an optional DiagnosticReport bundle).

Built and validated with ``fhir.resources`` (its R4B models, which serialise FHIR
R4-compatible Observation and DiagnosticReport JSON). The Observation is
``preliminary`` (no clinician has verified it), category ``imaging``, with a local
code (:data:`CODE_SYSTEM`), the X-ray age as ``valueQuantity`` in UCUM years
(``a``) and the interval, chronological age and gaps as components. It is
``derivedFrom`` the ImagingStudy, referenced by its Study Instance UID
(``urn:dicom:uid`` / ``urn:oid:...``); ``subject`` is the Patient, referenced by the
DICOM Patient ID with a configurable ``system`` (:data:`PATIENT_ID_SYSTEM` by default;
FHIR R4 allows only Patient, Group, Device or Location there). A PNG/JPEG input gets
them from ``patient_id=`` and ``study_uid=`` (``xrayage predict --patient-id/--study-uid``
or manifest columns ``patient_id``/``study_uid``).
"""

from __future__ import annotations

import datetime as _dt
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..card import ModelCard
from ..estimate import AgeEstimate
from ..extras import require
from ._common import DISCLAIMER, coverage, model_label, require_age, software_label

if TYPE_CHECKING:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.observation import Observation

FEATURE = "FHIR Observation"

CODE_SYSTEM = "https://xrayage.org/fhir/CodeSystem/xrayage"
"""Local code system of the xrayage concepts (an identifier, not a web page)."""

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DICOM_UID = "urn:dicom:uid"

PATIENT_ID_SYSTEM = "urn:xrayage:patient-id"
"""Default ``system`` of the patient identifier (a placeholder namespace). Set the
hospital's own (its MRN system URI, or ``urn:oid:`` + the assigning authority's OID) with
``patient_system=`` / ``--fhir-patient-system``: FHIR servers match patients on
``system|value``."""
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

CODES = {
    "xray_age": ("xray-age", "X-ray age"),
    "interval": ("age-interval-given-xray-age", "Chronological age interval given X-ray age"),
    "age_gap": ("xray-age-gap", "X-ray age gap"),
    "age_gap_corrected": ("xray-age-gap-corrected", "X-ray age gap, bias corrected"),
    "report": ("xray-age-report", "X-ray age report"),
}
"""Local codes: key -> (code, display)."""


def to_fhir_observation(estimate: AgeEstimate, card: ModelCard, *,
                        decimals: int = 2, patient_system: str | None = None,
                        patient_id: str | None = None,
                        study_uid: str | None = None) -> Observation:
    """Build the FHIR Observation of one estimate.

    Parameters
    ----------
    estimate : AgeEstimate
        With an X-ray age. For a DICOM source the Observation references its study
        and patient; otherwise (PNG/JPEG input) it has no subject and no derivedFrom.
    card : ModelCard
    decimals : int
        Values are rounded to this many decimals (years).
    patient_system : str, optional
        ``system`` of the patient identifier (default :data:`PATIENT_ID_SYSTEM`).
    patient_id, study_uid : str, optional
        The patient identifier and Study Instance UID of a non-DICOM input (PNG/JPEG);
        for a DICOM source they override its header's.

    Returns
    -------
    fhir.resources.R4B.observation.Observation
        Validated on construction; ``.model_dump_json()`` gives the JSON.

    Raises
    ------
    ClinicalOutputError
        The estimate has no X-ray age.
    MissingExtraError
        fhir.resources is not installed.
    """
    observation = require("fhir.resources.R4B.observation", "clinical", FEATURE)
    age = require_age(estimate, FEATURE)
    components: list[dict[str, Any]] = []
    lower, upper = estimate.age_interval_lower, estimate.age_interval_upper
    if lower is not None and upper is not None:
        cov = coverage(card)
        code, display = CODES["interval"]
        components.append({
            "code": _concept(CODE_SYSTEM, code, display,
                             text=None if cov is None else
                             f"{cov:.0%} interval for the chronological age"),
            "valueRange": {"low": _years(lower, decimals), "high": _years(upper, decimals)},
        })
    if estimate.age_years is not None:
        components.append({"code": _concept(LOINC, "30525-0", "Age"),
                           "valueQuantity": _years(estimate.age_years, decimals)})
    for key in ("age_gap", "age_gap_corrected"):
        value = getattr(estimate, key)
        if value is not None:
            code, display = CODES[key]
            components.append({"code": _concept(CODE_SYSTEM, code, display),
                               "valueQuantity": _years(value, decimals)})
    code, display = CODES["xray_age"]
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"}],
        "status": "preliminary",
        "category": [_concept(OBSERVATION_CATEGORY, "imaging", "Imaging")],
        "code": _concept(CODE_SYSTEM, code, display,
                         text="X-ray age (age read from a frontal chest radiograph)"),
        "issued": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "valueQuantity": _years(age, decimals),
        "bodySite": _concept(SNOMED, "816094009", "Chest"),
        "method": {"text": f"{model_label(card)} ({software_label()}), "
                           f"architecture {card.architecture}"},
        "device": {"display": f"{model_label(card)} ({software_label()})"},
        "note": [{"text": _note(estimate)}],
        "component": components,
    }
    data.update(_dicom_context(estimate, patient_system or PATIENT_ID_SYSTEM, patient_id,
                               study_uid))
    return observation.Observation.model_validate(data)


def to_fhir_bundle(estimate: AgeEstimate, card: ModelCard, **kwargs: Any) -> Bundle:
    """A ``collection`` Bundle: a preliminary DiagnosticReport and its Observation.

    Parameters and errors as :func:`to_fhir_observation`.

    Returns
    -------
    fhir.resources.R4B.bundle.Bundle
    """
    bundle = require("fhir.resources.R4B.bundle", "clinical", FEATURE)
    obs = to_fhir_observation(estimate, card, **kwargs)
    obs_url, report_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    code, display = CODES["report"]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [_concept("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD",
                              "Radiology")],
        "code": _concept(CODE_SYSTEM, code, display),
        "issued": obs.issued.isoformat() if obs.issued is not None else None,
        "result": [{"reference": obs_url, "type": "Observation"}],
        "conclusion": _conclusion(estimate),
    }
    if obs.subject is not None:
        report["subject"] = obs.subject.model_dump(exclude_none=True)
    if obs.derivedFrom:
        report["imagingStudy"] = [r.model_dump(exclude_none=True) for r in obs.derivedFrom]
    return bundle.Bundle.model_validate({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"fullUrl": report_url, "resource": report},
                  {"fullUrl": obs_url, "resource": obs.model_dump(exclude_none=True)}],
    })


def write_fhir(estimate: AgeEstimate, card: ModelCard, path: str | Path, *,
               bundle: bool = False, **kwargs: Any) -> Path:
    """Write the Observation (or, with ``bundle=True``, the Bundle) as JSON."""
    path = Path(path)
    resource = (to_fhir_bundle if bundle else to_fhir_observation)(estimate, card, **kwargs)
    path.write_text(resource.model_dump_json(indent=2, exclude_none=True) + "\n",
                    encoding="utf-8")
    return path


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


def _years(value: float, decimals: int) -> dict[str, Any]:
    return {"value": round(float(value), decimals), "unit": "a", "system": UCUM, "code": "a"}


def _dicom_context(estimate: AgeEstimate, patient_system: str, patient_id: str | None = None,
                   study_uid: str | None = None) -> dict[str, Any]:
    """subject, derivedFrom and effectiveDateTime from the DICOM source (or the given ids)."""
    src = estimate.source
    ds = src.dataset if src is not None and src.source_format == "dicom" else None
    get = ds.get if ds is not None else (lambda _key, default=None: default)
    out: dict[str, Any] = {}
    study = (study_uid or str(get("StudyInstanceUID") or "")).strip()
    if study:
        display = "Chest radiograph"
        if get("SOPInstanceUID") and not study_uid:
            display += f", SOP Instance UID {get('SOPInstanceUID')}"
        out["derivedFrom"] = [{
            "type": "ImagingStudy", "display": display,
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study}"},
        }]
    patient = (patient_id or str(get("PatientID") or "")).strip()
    if patient:
        identifier: dict[str, Any] = {"system": patient_system, "value": patient}
        issuer = str(get("IssuerOfPatientID") or "").strip()
        if issuer and not patient_id:
            identifier["assigner"] = {"display": issuer}
        out["subject"] = {"type": "Patient", "identifier": identifier}
    date = str(get("StudyDate") or get("AcquisitionDate") or "").strip()
    if len(date) == 8 and date.isdigit():
        out["effectiveDateTime"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return out


def _note(estimate: AgeEstimate) -> str:
    qc = f"Quality check: {estimate.qc_status}"
    if estimate.qc_reasons:
        qc += f" ({', '.join(estimate.qc_reasons)})"
    return f"{DISCLAIMER}. {qc}."


def _conclusion(estimate: AgeEstimate) -> str:
    text = f"X-ray age {estimate.xray_age:.1f} years"
    if estimate.age_gap is not None:
        text += f", {estimate.age_gap:+.1f} years from the chronological age"
    return text + f". {DISCLAIMER}."
