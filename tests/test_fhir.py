"""FHIR R4 Observation and Bundle: validated and read back with fhir.resources."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from xrayage import AgeEstimate, XRayAge
from xrayage.errors import MissingExtraError
from xrayage.outputs import ClinicalOutputError, to_fhir_observation, write_fhir
from xrayage.outputs.fhir import CODE_SYSTEM, PATIENT_ID_SYSTEM, UCUM
from xrayage.quality import QualityFinding, QualityReport, QualityStatus

from .clinical_helpers import png_bytes, predict_kept


def components(obs: Observation) -> dict[str, Any]:
    return {c.code.coding[0].code: c for c in obs.component or []}


@pytest.mark.data
def test_observation_round_trip(estimate: AgeEstimate, estimator: XRayAge,
                                tmp_path: Path) -> None:
    path = write_fhir(estimate, estimator.card, tmp_path / "x.fhir.json")
    obs = Observation.model_validate_json(path.read_text())
    assert obs.status == "preliminary"
    assert obs.category[0].coding[0].code == "imaging"
    assert (obs.code.coding[0].system, obs.code.coding[0].code) == (CODE_SYSTEM, "xray-age")
    assert obs.code.coding[0].display == "X-ray age"
    value = obs.valueQuantity
    assert (value.system, value.code) == (UCUM, "a")
    assert float(value.value) == pytest.approx(round(estimate.xray_age, 2))
    comp = components(obs)
    interval = comp["age-interval-given-xray-age"].valueRange
    assert float(interval.low.value) == pytest.approx(round(estimate.age_interval_lower, 2))
    assert float(interval.high.value) == pytest.approx(round(estimate.age_interval_upper, 2))
    assert float(comp["30525-0"].valueQuantity.value) == pytest.approx(
        round(estimate.age_years, 2))
    assert float(comp["xray-age-gap"].valueQuantity.value) == pytest.approx(
        round(estimate.age_gap, 2))
    assert float(comp["xray-age-gap-corrected"].valueQuantity.value) == pytest.approx(
        round(estimate.age_gap_corrected, 2))
    assert "tiny-test 0" in obs.device.display


@pytest.mark.data
def test_observation_references_study_and_patient(estimate: AgeEstimate,
                                                  estimator: XRayAge) -> None:
    source = estimate.radiograph.dataset
    obs = to_fhir_observation(estimate, estimator.card)
    study = obs.derivedFrom[0]
    assert study.type == "ImagingStudy"
    assert (study.identifier.system, study.identifier.value) == (
        "urn:dicom:uid", f"urn:oid:{source.StudyInstanceUID}")
    assert source.SOPInstanceUID in study.display
    assert obs.subject.type == "Patient" and obs.subject.identifier.value == source.PatientID
    assert obs.subject.identifier.system == PATIENT_ID_SYSTEM  # the documented default
    mrn = to_fhir_observation(estimate, estimator.card, patient_system="urn:oid:1.2.3.4")
    assert mrn.subject.identifier.system == "urn:oid:1.2.3.4"
    date = str(source.StudyDate)
    assert str(obs.effectiveDateTime) == f"{date[:4]}-{date[4:6]}-{date[6:]}"


@pytest.mark.data
def test_bundle_links_report_and_observation(estimate: AgeEstimate, estimator: XRayAge,
                                             tmp_path: Path) -> None:
    path = write_fhir(estimate, estimator.card, tmp_path / "b.json", bundle=True)
    bundle = Bundle.model_validate_json(path.read_text())
    report, _obs = (e.resource for e in bundle.entry)
    assert report.__resource_type__ == "DiagnosticReport" and report.status == "preliminary"
    assert report.result[0].reference == bundle.entry[1].fullUrl
    assert report.imagingStudy[0].identifier.value.endswith(estimate.radiograph.study_instance_uid)
    assert f"{estimate.xray_age:.1f}" in report.conclusion


def test_png_input_gives_observation_without_study(estimator: XRayAge) -> None:
    est = predict_kept(estimator, png_bytes(), name="chest.png", heatmap=False)
    obs = Observation.model_validate_json(to_fhir_observation(est, estimator.card)
                                          .model_dump_json())
    assert obs.derivedFrom is None and obs.subject is None
    assert "30525-0" not in components(obs)  # no chronological age in a PNG
    assert "age_unknown" in obs.note[0].text


def test_png_input_takes_patient_and_study_ids(estimator: XRayAge) -> None:
    est = predict_kept(estimator, png_bytes(), name="chest.png", heatmap=False)
    obs = to_fhir_observation(est, estimator.card, patient_id="MRN-7", study_uid="1.2.3.4.5",
                              patient_system="https://hospital.example/mrn")
    assert (obs.subject.identifier.system, obs.subject.identifier.value) == (
        "https://hospital.example/mrn", "MRN-7")
    assert obs.derivedFrom[0].identifier.value == "urn:oid:1.2.3.4.5"


def test_rejected_and_missing_extra(estimator: XRayAge, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClinicalOutputError, match=r"x\.dcm: no FHIR Observation: no X-ray age"):
        to_fhir_observation(AgeEstimate("x.dcm", quality=QualityReport([QualityFinding(
            "not_chest", QualityStatus.REJECT, "not the chest")])), estimator.card)
    monkeypatch.setitem(sys.modules, "fhir.resources.R4B.observation", None)
    with pytest.raises(MissingExtraError, match="FHIR Observation needs the 'clinical' extra"):
        to_fhir_observation(AgeEstimate("x.dcm", xray_age=50.0), estimator.card)
