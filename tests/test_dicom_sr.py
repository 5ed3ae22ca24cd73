"""DICOM SR (TID 1500): built from the real fixtures, validated by dciodvfy, read back."""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from xrayage import AgeEstimate, XRayAge
from xrayage.cli.main import main
from xrayage.errors import MissingExtraError
from xrayage.outputs import ClinicalOutputError, read_dicom_sr, to_dicom_sr, write_dicom_sr
from xrayage.outputs.dicom_sr import (
    AGE_INTERVAL_LOWER,
    CODING_SCHEME,
    LEGACY_INTERVAL,
    XRAY_AGE,
)
from xrayage.quality import QualityFinding, QualityReport, QualityStatus

from .clinical_helpers import dciodvfy, png_bytes, predict_kept
from .shared import NEMA

FIELDS = ("xray_age", "age_interval_lower", "age_interval_upper", "age_years", "age_gap",
          "age_gap_corrected")




@pytest.mark.data
def test_sr_validates_and_round_trips(estimate: AgeEstimate, estimator: XRayAge,
                                      tmp_path: Path) -> None:
    path = write_dicom_sr(estimate, estimator.card, tmp_path / "x.sr.dcm")
    errors, _warnings = dciodvfy(path)
    assert errors == []
    values = read_dicom_sr(path)
    for field in FIELDS:
        assert getattr(values, field) == pytest.approx(round(getattr(estimate, field), 2))
    assert (values.algorithm_name, values.algorithm_version) == (
        estimator.card.name, estimator.card.version)


@pytest.mark.data
def test_interval_is_named_for_the_chronological_age_and_old_codes_still_read(
        estimate: AgeEstimate, estimator: XRayAge) -> None:
    sr = to_dicom_sr(estimate, estimator.card)

    def items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
        out = []
        for item in getattr(ds, "ContentSequence", []):
            out.append(item)
            out.extend(items(item))
        return out

    names = {str(i.ConceptNameCodeSequence[0].CodeValue): str(
        i.ConceptNameCodeSequence[0].CodeMeaning) for i in items(sr)}
    assert names["XRA006"] == names[AGE_INTERVAL_LOWER.value] == AGE_INTERVAL_LOWER.meaning
    assert "given radiographic age" in names["XRA006"] and "XRA002" not in names
    for item in items(sr):  # rewrite it as an SR of an earlier version
        code = item.ConceptNameCodeSequence[0]
        old = {"XRA006": "XRA002", "XRA007": "XRA003"}.get(str(code.CodeValue))
        if old:
            code.CodeValue = old
            code.CodeMeaning = LEGACY_INTERVAL[
                "age_interval_lower" if old == "XRA002" else "age_interval_upper"].meaning
    values = read_dicom_sr(sr)
    assert values.age_interval_lower == pytest.approx(round(estimate.age_interval_lower, 2))
    assert values.age_interval_upper == pytest.approx(round(estimate.age_interval_upper, 2))


@pytest.mark.data
def test_sr_references_source_and_copies_patient(estimate: AgeEstimate, estimator: XRayAge,
                                                 tmp_path: Path) -> None:
    source = pydicom.dcmread(estimate.path, stop_before_pixels=True)
    path = write_dicom_sr(estimate, estimator.card, tmp_path / "x.sr.dcm")
    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate"):
        assert sr.get(keyword) == source.get(keyword)
    if "PatientAge" in source:  # SIIM writes the invalid "62": the SR holds "062Y"
        assert sr.PatientAge == f"{int(str(source.PatientAge).rstrip('Y')):03d}Y"
    assert read_dicom_sr(path).source_sop_instance_uid == source.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    schemes = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert CODING_SCHEME in schemes
    group = sr.content.get_image_measurement_groups(
        referenced_sop_instance_uid=source.SOPInstanceUID)[0]
    assert group.get_measurements(name=XRAY_AGE)[0].unit.value == "a"


@pytest.mark.data
def test_sr_without_chronological_age_has_no_gaps(estimate: AgeEstimate,
                                                  estimator: XRayAge) -> None:
    unknown = replace(estimate, age_years=None, age_gap=None, age_gap_corrected=None)
    values = read_dicom_sr(to_dicom_sr(unknown, estimator.card))
    assert values.xray_age == pytest.approx(round(estimate.xray_age, 2))
    assert values.age_years is None and values.age_gap is None
    assert values.age_gap_corrected is None


def test_png_input_is_refused_clearly(estimator: XRayAge) -> None:
    est = predict_kept(estimator, png_bytes(), name="in/chest.png")
    assert est.xray_age is not None
    with pytest.raises(ClinicalOutputError, match=r"in/chest\.png: no DICOM SR: .*not DICOM"):
        to_dicom_sr(est, estimator.card)


def test_rejected_estimate_is_refused(estimator: XRayAge) -> None:
    est = AgeEstimate("lateral.dcm", quality=QualityReport([QualityFinding(
        "lateral_view", QualityStatus.REJECT, "view LL is lateral")]))
    with pytest.raises(ClinicalOutputError, match=r"no X-ray age.*lateral_view"):
        to_dicom_sr(est, estimator.card)


def test_missing_highdicom_names_the_extra(estimator: XRayAge,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(MissingExtraError, match=r"DICOM SR needs the 'clinical' extra"):
        to_dicom_sr(AgeEstimate("x.dcm", xray_age=50.0), estimator.card)


@pytest.mark.data
def test_cli_writes_dicom_outputs_and_warns_for_png(estimator: XRayAge, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    png = tmp_path / "chest.png"
    png.write_bytes(png_bytes())
    out, dirs = tmp_path / "out.csv", {k: tmp_path / k for k in ("sr", "sc", "fhir", "report")}
    model_dir = str(estimator.model.directory)
    with caplog.at_level(logging.WARNING, logger="xrayage"):
        code = main(["predict", str(NEMA), str(png), "-o", str(out), "--model", model_dir,
                     *[a for k, d in dirs.items() for a in (f"--{k}", str(d))]])
    assert code == 0
    with open(out, newline="") as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    assert set(rows) == {NEMA.name, "chest.png"}
    assert rows["chest.png"]["xray_age"] != "" and rows["chest.png"]["error"] == ""
    assert [p.name.startswith(NEMA.stem) for p in dirs["sr"].iterdir()] == [True]
    assert [p.name.startswith(NEMA.stem) for p in dirs["sc"].iterdir()] == [True]
    assert len(list(dirs["fhir"].iterdir())) == 2 and len(list(dirs["report"].iterdir())) == 2
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("chest.png: no DICOM SR" in m and "not DICOM" in m for m in warned)
    assert any("chest.png: no DICOM Secondary Capture" in m for m in warned)


def test_source_without_type2_patient_attributes(tmp_path: Path) -> None:
    """Real radiographs often lack PatientID or PatientBirthDate: the SR is still made."""
    from xrayage.predict import PredictInput

    from .dicom_factory import make_dataset, to_bytes
    from .onnx_factory import build_tiny_model

    ds = make_dataset(PatientBirthDate=None, PatientSex=None, PatientName=None, PatientID=None,
                      StudyDate=None)
    model = XRayAge.load(build_tiny_model(tmp_path / "m"))
    est = next(model.predict_many([PredictInput(to_bytes(ds), "bare.dcm")], keep_radiograph=True))
    sr = to_dicom_sr(est, model.card)
    assert sr.PatientID == "" and sr.StudyInstanceUID == ds.StudyInstanceUID
