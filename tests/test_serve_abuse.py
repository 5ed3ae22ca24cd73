"""Hostile uploads against a live server on loopback, and schemathesis on the OpenAPI schema.

Every bad request must get a 4xx with a JSON ``detail`` that says what is wrong, and
the server must keep answering afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("fastapi", reason="needs the 'serve' extra")

from xrayage import XRayAge
from xrayage.serve.app import create_app

from .dicom_factory import make_dataset, to_bytes
from .onnx_factory import build_tiny_model
from .serve_support import chest_dataset, gray_png, live_server, png_header_bomb, zip_bomb

LIMIT = 2 << 20  # 2 MiB upload limit for these tests

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    return XRayAge.load(build_tiny_model(tmp_path_factory.mktemp("tiny")), threads=1)


@pytest.fixture(scope="module")
def url(estimator: XRayAge) -> Iterator[str]:
    with live_server(create_app(estimator, max_upload_bytes=LIMIT, timeout_s=20)) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c
    with httpx.Client(base_url=url, timeout=10) as check:  # the server stays up
        assert check.get("/healthz").status_code == 200


def upload(client: httpx.Client, data: bytes, name: str = "chest.dcm",
           content_type: str = "application/octet-stream") -> httpx.Response:
    return client.post("/v1/predict", files={"file": (name, data, content_type)})


def detail(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json")
    return str(r.json()["detail"])


def test_oversize_declared(client: httpx.Client) -> None:
    r = upload(client, b"\0" * (LIMIT + 10))
    assert r.status_code == 413 and "limit" in detail(r)


def test_oversize_streamed_without_length(client: httpx.Client) -> None:
    """A chunked body with no Content-Length is cut off once it passes the limit."""
    boundary = "xrayageboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.dcm\"\r\nContent-Type: application/dicom\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 40 x 256 KiB = 10 MiB, five times the limit
            yield b"\0" * (256 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = client.post("/v1/predict", content=body(),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except httpx.TransportError:
        return  # the server closed the connection mid-upload: also a refusal
    assert r.status_code == 413 and "limit" in detail(r)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.95])
def test_truncated_dicom(client: httpx.Client, cut: float) -> None:
    data = to_bytes(chest_dataset())
    r = upload(client, data[: int(len(data) * cut)])
    assert r.status_code in (400, 415), r.text
    assert "upload" in detail(r)


def test_truncated_png(client: httpx.Client) -> None:
    data = gray_png()
    r = upload(client, data[: len(data) // 2], "x.png")
    assert r.status_code == 400 and "corrupt PNG" in detail(r)


@pytest.mark.parametrize("data", [b"", b"hello, world\n" * 50, b"%PDF-1.7\n" + b"\0" * 300,
                                  b"GIF89a" + b"\0" * 300], ids=["empty", "text", "pdf", "gif"])
def test_not_an_image(client: httpx.Client, data: bytes) -> None:
    r = upload(client, data)
    assert r.status_code in (400, 415)
    assert "empty" in detail(r) or "not a DICOM, PNG or JPEG" in detail(r)


def test_zip_bomb(client: httpx.Client) -> None:
    data = zip_bomb()
    assert len(data) < 200_000
    r = upload(client, data, "chest.zip", "application/zip")
    assert r.status_code == 415 and "not a DICOM, PNG or JPEG" in detail(r)


@pytest.mark.parametrize("side", [60000, 8000])  # caught by Pillow; by the service's limit
def test_png_decompression_bomb(client: httpx.Client, side: int) -> None:
    r = upload(client, png_header_bomb(side, side), "chest.png", "image/png")
    assert r.status_code == 413 and "exceeds" in detail(r)


def test_dicom_claiming_huge_image(client: httpx.Client) -> None:
    ds = make_dataset(Rows=50000, Columns=50000)
    r = upload(client, to_bytes(ds))
    assert r.status_code == 413 and "exceeds the limit" in detail(r)


@pytest.mark.parametrize("headers, content", [
    ({"Content-Type": "application/json"}, b'{"file": "chest.dcm"}'),
    ({"Content-Type": "image/png"}, gray_png()),
    ({}, b"raw bytes"),
], ids=["json", "raw-png", "none"])
def test_wrong_request_content_type(client: httpx.Client, headers: dict[str, str],
                                    content: bytes) -> None:
    r = client.post("/v1/predict", content=content, headers=headers)
    assert r.status_code == 415 and "multipart/form-data" in detail(r)


def test_wrong_part_content_type_is_ignored(client: httpx.Client) -> None:
    """The format comes from the content, so a PNG labelled text/plain still works."""
    r = upload(client, gray_png(), "notes.txt", "text/plain")
    assert r.status_code == 200 and r.json()["xray_age"] is not None


def test_multipart_without_file_or_broken(client: httpx.Client) -> None:
    r = client.post("/v1/predict", files={"other": ("a.png", gray_png(), "image/png")})
    assert r.status_code == 422
    r = client.post("/v1/predict", content=b"--nope\r\ngarbage",
                    headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("fields", [{"age_years": "-3"}, {"age_years": "abc"},
                                    {"sex": "X"}, {"heatmap": "perhaps"}])
def test_bad_fields(client: httpx.Client, fields: dict[str, str]) -> None:
    r = client.post("/v1/predict", files={"file": ("a.png", gray_png(), "image/png")},
                    data=fields)
    assert r.status_code == 422


# --- schemathesis: every operation, generated from the OpenAPI schema ---------------------

schemathesis = pytest.importorskip("schemathesis", reason="needs the 'test' extra")


def test_schemathesis(tmp_path: Path) -> None:
    """Generated requests for every operation: no 5xx, and responses match the schema."""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    app = create_app(XRayAge.load(build_tiny_model(tmp_path), threads=1), max_upload_bytes=LIMIT)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/healthz", "/v1/model", "/v1/predict"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: object) -> None:
            # Random bytes that fit the schema are rarely an image: 415 is the right answer.
            case.call_and_validate(  # type: ignore[attr-defined]
                excluded_checks=[positive_data_acceptance])

        check()
