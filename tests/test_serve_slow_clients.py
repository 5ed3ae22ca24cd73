"""Slow clients cannot lock the service, and every route answers every error as JSON.

- 20 slow uploads (headers, 5 bytes of a declared 10 MB body, then a byte a second)
  from 127.0.0.2 while a normal client on 127.0.0.1 makes 20 requests (health checks
  and real predictions): every normal request is answered within 2 s; the slow ones get
  429 (more than ``per_client`` from one address) or 408 (below the minimum rate).
- Every route, for every error class (400, 401, 404, 405, 408, 413, 415, 422, 429, 500,
  503, 504), answers ``application/json`` with a ``detail`` and a stable ``code``.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra")

from fastapi.testclient import TestClient

from xrayage import XRayAge
from xrayage.serve.app import create_app
from xrayage.serve.limits import ERROR_CODES, UploadLimits

from .dicom_factory import to_bytes
from .onnx_factory import build_tiny_model
from .serve_support import SlowXRayAge, chest_dataset, gray_png, live_server

pytestmark = pytest.mark.timeout(120)

KEY = "k" * 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def slow_upload(host: str, port: int, result: dict[str, Any], duration_s: float = 12) -> None:
    """Send headers and 5 bytes of a 10 MB body, then a byte a second; keep the status."""
    boundary = "slowboundary"
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {10_000_000}\r\n\r\n").encode()
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))  # another loopback address: another client
    sock.settimeout(duration_s + 5)
    try:
        sock.connect((host, port))
        sock.sendall(head + b"--slo")
        end = time.monotonic() + duration_s
        sock.setblocking(False)
        reply = b""
        while time.monotonic() < end and b"\r\n\r\n" not in reply:
            try:
                reply += sock.recv(65536)
                if not reply:
                    break
            except BlockingIOError:
                pass
            try:
                sock.send(b"w")
            except OSError:
                break
            time.sleep(1.0)
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
        result["status"] = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None
        result["body"] = reply
    finally:
        sock.close()


def test_slow_uploads_do_not_block_normal_requests(tiny: Path) -> None:
    app = create_app(XRayAge.load(tiny, threads=1), workers=1, max_queue=4)
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        results: list[dict[str, Any]] = [{} for _ in range(20)]
        slow = [threading.Thread(target=slow_upload, args=("127.0.0.1", port, r))
                for r in results]
        for thread in slow:
            thread.start()
        time.sleep(1.0)  # the slow ones hold their connections now
        latencies = []
        png = gray_png()
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(20):
                start = time.monotonic()
                if i % 2:
                    r = client.get("/healthz")
                else:
                    r = client.post("/v1/predict", files={"file": ("a.png", png)})
                latencies.append(time.monotonic() - start)
                assert r.status_code == 200, r.text
        for thread in slow:
            thread.join(30)
        print(f"normal requests: max {max(latencies):.3f} s, "
              f"median {sorted(latencies)[len(latencies) // 2]:.3f} s")
        assert max(latencies) < 2.0, latencies
        statuses = sorted(r.get("status") or 0 for r in results)
        limits = UploadLimits()
        assert statuses.count(429) == 20 - limits.per_client, statuses
        assert statuses.count(408) == limits.per_client, statuses
        assert app.state.pool.active == 0


def assert_json_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["code"], str) and body["code"]
    if code is not None:
        assert body["code"] == code, body


class BrokenXRayAge(XRayAge):
    """An estimator whose model fails (a bug, not a bad input): the service says 500."""

    def predict_many(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise RuntimeError("boom")


def test_every_route_answers_every_error_as_json(tiny: Path) -> None:
    estimator = XRayAge.load(tiny, threads=1)
    png = gray_png()
    with TestClient(create_app(estimator, api_key=KEY, max_upload_bytes=1 << 20),
                    raise_server_exceptions=False) as c:
        auth = {"X-API-Key": KEY}
        for method, path in (("GET", "/v1/model"), ("GET", "/openapi.json"),
                             ("POST", "/v1/predict"), ("GET", "/nowhere")):
            assert_json_error(c.request(method, path), 401, "unauthorized")
        assert_json_error(c.get("/nowhere", headers=auth), 404, "not_found")
        assert_json_error(c.get("/static/nothing.js"), 404, "not_found")
        assert_json_error(c.get("/v1/predict", headers=auth), 405, "method_not_allowed")
        assert_json_error(c.post("/healthz"), 405, "method_not_allowed")
        assert_json_error(c.post("/v1/model", headers=auth), 405, "method_not_allowed")
        assert_json_error(c.post("/v1/predict", headers=auth, content=b"x"), 415,
                          "unsupported_media_type")
        assert_json_error(c.post("/v1/predict", headers=auth,
                                 files={"file": ("a", b"\0" * (2 << 20))}), 413,
                          "upload_too_large")
        assert_json_error(c.post("/v1/predict", headers=auth,
                                 files={"file": ("a", b"PK\3\4 not an image")}), 415,
                          "unsupported_format")
        assert_json_error(c.post("/v1/predict", headers=auth,
                                 files={"file": ("a", png[:200])}), 400, "unreadable")
        assert_json_error(c.post("/v1/predict", headers=auth, data={"age_years": "-3"},
                                 files={"file": ("a", png)}), 422, "invalid_request")
        assert_json_error(c.post("/v1/predict", headers=auth, files={"other": ("a", png)}), 422,
                          "invalid_request")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the invalid DS value
            nan = to_bytes(chest_dataset(WindowCenter="nan", WindowWidth="400"))
        for query in ("", "?sr=true&fhir=true"):
            r = c.post(f"/v1/predict{query}", headers=auth, files={"file": ("a", nan)})
            assert_json_error(r, 422, "non_finite")
            assert "NaN or infinite" in r.json()["detail"]
        broken = {"Content-Type": "multipart/form-data; boundary=zz", **auth}
        r = c.post("/v1/predict", headers=broken, content=b"--zz\r\nbroken")
        assert r.status_code in (400, 422)
        assert_json_error(r, r.status_code)
    with TestClient(create_app(BrokenXRayAge.load(tiny, threads=1)),
                    raise_server_exceptions=False) as c:
        assert_json_error(c.post("/v1/predict", files={"file": ("a", png)}), 500,
                          "internal_error")
    slow = SlowXRayAge.load(tiny, threads=1)
    slow.delay_s = 1.0
    with TestClient(create_app(slow, timeout_s=0.3)) as c:
        assert_json_error(c.post("/v1/predict", files={"file": ("a", png)}), 504, "timeout")


def test_refusals_of_the_guard_are_json(tiny: Path) -> None:
    """503 (queue), 429 (uploads per address) and 408 (slow body) on a live server."""
    slow = SlowXRayAge.load(tiny, threads=1)
    slow.delay_s = 1.5
    app = create_app(slow, workers=1, max_queue=0,
                     uploads=UploadLimits(per_client=1, grace_s=0.5, body_timeout_s=3))
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        first: dict[str, Any] = {}
        holder = threading.Thread(target=lambda: first.update(r=httpx.post(
            f"{url}/v1/predict", files={"file": ("a", gray_png())}, timeout=20)))
        holder.start()
        time.sleep(0.8)  # the first request holds the only inference slot
        assert_json_error(httpx.post(f"{url}/v1/predict", files={"file": ("a", gray_png())}),
                          503, "busy")
        holder.join(20)
        assert first["r"].status_code == 200
        result: dict[str, Any] = {}
        slow_upload("127.0.0.1", port, result, duration_s=4)
        assert result["status"] == 408 and b'"code":"upload_too_slow"' in result["body"]


def test_default_codes_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    for code in {*ERROR_CODES.values(), "unreadable", "unsupported_format", "too_large",
                 "non_finite", "upload_too_large", "upload_too_slow", "busy_uploads"}:
        assert f"`{code}`" in doc, code
