"""NaN and infinity never pass: window, rescale and pixels, through every entry point."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from xrayage.cli.main import main
from xrayage.estimate import FailureKind
from xrayage.pipeline import PredictInput, Prepared, prepare
from xrayage.predict import XRayAge

from .dicom_factory import make_dataset, to_bytes
from .onnx_factory import build_tiny_model

CASES = {
    "window_width_inf": {"WindowWidth": "inf", "WindowCenter": "100"},
    "window_center_nan": {"WindowCenter": "nan", "WindowWidth": "400"},
    "rescale_slope_nan": {"RescaleSlope": "nan", "RescaleIntercept": "0"},
    "rescale_intercept_inf": {"RescaleIntercept": "inf", "RescaleSlope": "1"},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid DS values
        for name, attrs in CASES.items():
            out[name] = root / f"{name}.dcm"
            out[name].write_bytes(to_bytes(make_dataset(**attrs)))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_prepare_types_the_failure(case: str, files: dict[str, Path], tiny: Path) -> None:
    spec = XRayAge.load(tiny).card.preprocessing
    p = prepare(PredictInput(str(files[case]), files[case].name), spec)
    assert not p.accepted and p.estimate.failure is not None
    assert p.estimate.failure.kind is FailureKind.NON_FINITE
    assert Prepared.from_metadata(json.loads(json.dumps(p.metadata())), None).estimate.failure \
        == p.estimate.failure  # what a Ray task ships


def test_cli_rows_are_valid_json_and_csv(files: dict[str, Path], tiny: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    paths = [str(p) for p in files.values()]
    assert main(["predict", *paths, "--model", str(tiny), "-o", str(out), "--sr",
                 str(tmp_path / "sr"), "--fhir", str(tmp_path / "fhir")]) == 0
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
            for line in out.read_text().splitlines()]
    assert len(rows) == len(CASES)
    assert all(r["xray_age"] is None and r["qc_status"] == "error" for r in rows)
    assert all("NaN or infinite" in r["error"] for r in rows)
    assert not list((tmp_path / "sr").glob("*")) and not list((tmp_path / "fhir").glob("*"))
    csv_out = tmp_path / "out.csv"
    assert main(["predict", *paths, "--model", str(tiny), "-o", str(csv_out)]) == 0
    with open(csv_out, newline="") as handle:
        for row in csv.DictReader(handle):
            for key in ("xray_age", "age_interval_lower", "age_interval_upper", "age_gap",
                        "age_gap_corrected"):
                assert row[key] == "", (key, row[key])
            assert row["qc_status"] == "error"


def test_service_answers_4xx_json(files: dict[str, Path], tiny: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xrayage.serve.app import create_app

    with TestClient(create_app(str(tiny))) as client:
        for path in files.values():
            for query in ("", "?sr=true&fhir=true"):
                r = client.post(f"/v1/predict{query}",
                                files={"file": (path.name, path.read_bytes())})
                assert 400 <= r.status_code < 500, r.text
                assert "NaN or infinite" in r.json()["detail"]
