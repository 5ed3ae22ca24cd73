"""The HTTP API: predictions, model card, auth, limits, outputs and logs (tiny ONNX model)."""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
from fastapi.testclient import TestClient

from xrayage import XRayAge
from xrayage.serve.app import create_app

from .dicom_factory import to_bytes
from .onnx_factory import build_tiny_model
from .serve_support import (
    SECRET_ID,
    SECRET_NAME,
    SlowXRayAge,
    chest_dataset,
    gray_png,
    live_server,
)
from .shared import NEMA

KEY = "k" * 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def estimator(tiny: Path) -> XRayAge:
    return XRayAge.load(tiny, threads=1)


@pytest.fixture(scope="module")
def client(estimator: XRayAge) -> Iterator[TestClient]:
    with TestClient(create_app(estimator)) as c:
        yield c


def post(client: TestClient | httpx.Client, data: bytes, name: str = "x.dcm",
         **fields: str) -> httpx.Response:
    return client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")},
                       data=fields)


def test_dicom_prediction_matches_library(client: TestClient, estimator: XRayAge) -> None:
    data = to_bytes(chest_dataset())
    r = post(client, data)
    assert r.status_code == 200, r.text
    body = r.json()
    est = estimator.predict(data)
    assert body["xray_age"] == pytest.approx(est.xray_age, abs=0.01)
    assert body["age_interval_lower"] == pytest.approx(est.xray_age - 8, abs=0.01)
    assert body["interval_coverage"] == 0.9
    assert body["age_years"] == 55.0
    assert body["age_gap"] == pytest.approx(est.xray_age - 55, abs=0.01)
    assert body["age_gap_corrected"] is not None
    assert body["qc_status"] == "ok" and body["qc_messages"] == []
    assert body["model"] == {"name": "tiny-test", "version": "0"}
    assert body["heatmap_png_base64"] is None


def test_png_with_typed_age_heatmap_and_query_fields(client: TestClient) -> None:
    r = post(client, gray_png(), "chest.png", age_years="70", sex="F", heatmap="true")
    body = r.json()
    assert r.status_code == 200 and body["age_years"] == 70.0
    assert body["age_gap"] == pytest.approx(body["xray_age"] - 70, abs=0.02)
    assert "view_unknown" not in body["qc_reasons"] or body["qc_status"] == "warn"
    png = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert png.format == "PNG" and png.mode == "RGB"
    q = client.post("/v1/predict?age_years=40&heatmap=true",
                    files={"file": ("a.png", gray_png(), "image/png")})
    assert q.json()["age_years"] == 40.0 and q.json()["heatmap_png_base64"]


def test_rejected_image_is_a_result_without_age(client: TestClient) -> None:
    body = post(client, to_bytes(chest_dataset(BodyPartExamined="HAND")), sr="true").json()
    assert body["qc_status"] == "reject" and body["xray_age"] is None
    assert "not_chest" in body["qc_reasons"] and "HAND" in body["qc_messages"][0]
    assert body["sr_dicom_base64"] is None and body["notes"]


def test_sr_and_fhir_outputs(client: TestClient) -> None:
    pytest.importorskip("highdicom", reason="needs the 'clinical' extra")
    outputs = pytest.importorskip("xrayage.outputs", reason="xrayage.outputs not built yet")
    from pydicom import dcmread

    read_dicom_sr = outputs.read_dicom_sr

    ds = chest_dataset()
    body = post(client, to_bytes(ds), sr="true", fhir="true").json()
    sr = dcmread(io.BytesIO(base64.b64decode(body["sr_dicom_base64"])))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == ds.StudyInstanceUID
    assert read_dicom_sr(sr).xray_age == pytest.approx(body["xray_age"], abs=0.01)
    assert body["fhir_observation"]["resourceType"] == "Observation"
    assert body["fhir_observation"]["valueQuantity"]["value"] == pytest.approx(
        body["xray_age"], abs=0.01)
    png = post(client, gray_png(), "a.png", sr="true", fhir="true").json()
    assert png["sr_dicom_base64"] is None and "DICOM" in " ".join(png["notes"])
    assert png["fhir_observation"]["resourceType"] == "Observation"


@pytest.mark.data
def test_nema_chest_cr(client: TestClient) -> None:
    body = post(client, NEMA.read_bytes(), heatmap="true").json()
    assert body["qc_status"] in ("ok", "warn") and body["xray_age"] is not None
    assert body["age_years"] == pytest.approx(64.5, abs=0.1)


def test_model_card_health_schema_and_page(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    card = client.get("/v1/model").json()
    assert card["name"] == "tiny-test" and card["conformal"]["coverage"] == 0.9
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/model", "/v1/predict"} <= set(paths)
    assert {"400", "413", "415", "503", "504"} <= set(paths["/v1/predict"]["post"]["responses"])
    page = client.get("/")
    assert page.status_code == 200 and "Drop a chest radiograph" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no external assets
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 404  # Swagger UI would load a CDN


def test_api_key(estimator: XRayAge) -> None:
    with TestClient(create_app(estimator, api_key=KEY)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data; its API calls need the key
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY}"}):
            r = c.get("/v1/model", headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert c.get("/openapi.json").status_code == 401
        r = c.post("/v1/predict", files={"file": ("a.png", gray_png(), "image/png")})
        assert r.status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        r = c.post("/v1/predict", files={"file": ("a.png", gray_png(), "image/png")},
                   headers={"X-API-Key": KEY})
        assert r.status_code == 200


def test_cli_reads_api_key_file(tmp_path: Path) -> None:
    import click

    from xrayage.cli.serve import read_api_key

    good = tmp_path / "key"
    good.write_text(KEY + "\n")
    assert read_api_key(good) == KEY
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(click.BadParameter):
        read_api_key(short)


def test_timeout_gives_504(tiny: Path) -> None:
    slow = SlowXRayAge.load(tiny, threads=1)
    slow.delay_s = 1.5
    with TestClient(create_app(slow, timeout_s=0.3)) as c:
        r = post(c, gray_png(), "a.png")
        assert r.status_code == 504 and "0.3 s" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_queue_limit_gives_503_with_retry_after(tiny: Path) -> None:
    slow = SlowXRayAge.load(tiny, threads=1)
    slow.delay_s = 1.0
    app = create_app(slow, workers=1, max_queue=1)
    statuses: list[int] = []
    retry: list[str] = []
    with live_server(app) as url:

        def one() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                r = post(c, gray_png(), "a.png")
                statuses.append(r.status_code)
                if r.status_code == 503:
                    retry.append(r.headers["Retry-After"])

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses).count(200) == 2 and statuses.count(503) == 3, statuses
        assert all(int(v) >= 1 for v in retry)
        assert app.state.pool.active == 0
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_logs_hold_no_patient_identifiers(client: TestClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    good = to_bytes(chest_dataset())
    truncated = good[: len(good) // 2]
    with caplog.at_level(logging.DEBUG):
        for data in (good, truncated, to_bytes(chest_dataset(BodyPartExamined="HAND"))):
            post(client, data, name=f"{SECRET_NAME}.dcm", heatmap="true", sr="true")
        client.post("/v1/predict?age_years=61", files={"file": ("x", good, "x")})
    server = [r for r in caplog.records if not r.name.startswith("httpx")]  # not the client's
    text = "\n".join(r.getMessage() + str(r.exc_info or "") for r in server)
    assert "/v1/predict" in text  # requests are logged ...
    for secret in (SECRET_NAME, SECRET_ID, "Zzyzx", "Quentavious", "19650412", "ACC-SECRET",
                   "age_years=61"):
        assert secret not in text  # ... without identifiers or query strings
