"""Integration with a real PACS: Orthanc (Debian ``orthanc``) routes a radiograph to the node.

The test writes an Orthanc configuration (loopback HTTP, free ports, a temporary
storage folder, no plugins, no authentication, the xrayage node as the only known
modality), stores a chest radiograph into Orthanc, asks Orthanc to send it to the node
(REST ``/modalities/xrayage/store``), and checks through the REST API that the SR came
back into the same study with the right X-ray age.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("pynetdicom", reason="needs the 'serve' extra")
pytest.importorskip("highdicom", reason="needs the 'clinical' extra")

from pydicom import dcmread

from xrayage import XRayAge
from xrayage.outputs import read_dicom_sr
from xrayage.serve.node import Destination, XRayAgeNode

from .dicom_factory import to_bytes
from .onnx_factory import build_tiny_model
from .serve_support import chest_dataset, free_port
from .shared import NEMA

ORTHANC = shutil.which("Orthanc") or next(
    (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None)

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.timeout(180),
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc binary not found (apt-get install "
                       "orthanc; CI installs it)"),
]


def orthanc_config(storage: Path, http_port: int, dicom_port: int,
                   node_port: int) -> dict[str, Any]:
    return {
        "Name": "xrayage-test", "StorageDirectory": str(storage / "db"),
        "IndexDirectory": str(storage / "db"), "Plugins": [], "LuaScripts": [],
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "DicomModalities": {"xrayage": ["XRAYAGE", "127.0.0.1", node_port]},
        # Only the xrayage node, from loopback, may store or echo.
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True, "DicomCheckCalledAet": True,
        "ConcurrentJobs": 1, "HttpThreadsCount": 4, "SaveJobs": False, "StableAge": 1,
        "StorageCompression": False, "HttpDescribeErrors": True,
    }


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    return XRayAge.load(build_tiny_model(tmp_path_factory.mktemp("tiny")), threads=1)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory,
         estimator: XRayAge) -> Iterator[tuple[httpx.Client, XRayAgeNode]]:
    """A running Orthanc and a running xrayage node that forwards to it."""
    tmp = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port, node_port = free_port(), free_port(), free_port()
    (tmp / "orthanc.json").write_text(json.dumps(
        orthanc_config(tmp, http_port, dicom_port, node_port), indent=2))
    node = XRayAgeNode(estimator, ae_title="XRAYAGE",
                       forward=Destination("127.0.0.1", dicom_port, "ORTHANC"))
    node.start(host="127.0.0.1", port=node_port)
    log = open(tmp / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(ORTHANC), str(tmp / "orthanc.json")], stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not start:\n"
                                   + (tmp / "orthanc.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield client, node
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        node.stop()


def route_and_fetch_sr(client: httpx.Client, node: XRayAgeNode, data: bytes) -> Any:
    """Store `data` in Orthanc, route it to the node, return the SR Orthanc received."""
    stored = client.post("/instances", content=data).json()
    study = stored["ParentStudy"]
    r = client.post("/modalities/xrayage/store", content=stored["ID"])
    assert r.status_code == 200, r.text
    assert node.join(60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        series = client.get(f"/studies/{study}/series").json()
        srs = [s for s in series if s["MainDicomTags"].get("Modality") == "SR"]
        if srs:
            instances = client.get(f"/series/{srs[0]['ID']}/instances").json()
            raw = client.get(f"/instances/{instances[0]['ID']}/file").content
            return dcmread(io.BytesIO(raw))
        time.sleep(0.2)
    raise AssertionError("no SR arrived in the study")


def test_orthanc_echoes_node(pacs: tuple[httpx.Client, XRayAgeNode]) -> None:
    client, _ = pacs
    assert client.post("/modalities/xrayage/echo", content="{}").status_code == 200


def test_synthetic_chest_sr_comes_back(pacs: tuple[httpx.Client, XRayAgeNode],
                                       estimator: XRayAge) -> None:
    client, node = pacs
    ds = chest_dataset()
    data = to_bytes(ds)
    sr = route_and_fetch_sr(client, node, data)
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    assert read_dicom_sr(sr).xray_age == pytest.approx(estimator.predict(data).xray_age,
                                                       abs=0.01)


@pytest.mark.data
def test_nema_chest_cr_sr_comes_back(pacs: tuple[httpx.Client, XRayAgeNode],
                                     estimator: XRayAge) -> None:
    client, node = pacs
    sr = route_and_fetch_sr(client, node, NEMA.read_bytes())
    nema = dcmread(NEMA, stop_before_pixels=True)
    values = read_dicom_sr(sr)
    assert sr.StudyInstanceUID == nema.StudyInstanceUID
    assert sr.PatientID == nema.PatientID
    assert values.source_sop_instance_uid == nema.SOPInstanceUID
    assert values.xray_age == pytest.approx(estimator.predict(NEMA).xray_age, abs=0.01)
    assert values.age_years == pytest.approx(64.5, abs=0.1)
