"""A real Orthanc for the PACS tests, and the corpus they store in it.

`test_dicomweb.py` and `test_orthanc_plugin.py` share them: 20 real radiographs (the shared SIIM
and NEMA DICOMs, DX made from shared NIH PNGs), a lateral and a CT; Orthanc on loopback with
its plugins; the expected SRs.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="needs the 'serve' extra")
pytest.importorskip("highdicom", reason="needs the 'clinical' extra")

from PIL import Image
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid

from xrayage import XRayAge
from xrayage.outputs import read_dicom_sr
from xrayage.serve.node import model_label, result_uid

from .clinical_helpers import dciodvfy
from .dicom_factory import make_dataset
from .serve_support import free_port
from .test_orthanc import ORTHANC

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def orthanc_plugin(stem: str) -> Path | None:
    """The path of an Orthanc plugin library (``libOrthancDicomWeb``), or None."""
    for folder in PLUGIN_DIRS:
        if (folder / f"{stem}.so").is_file():
            return folder / f"{stem}.so"
        found = sorted(folder.glob(f"{stem}.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


DICOMWEB = orthanc_plugin("libOrthancDicomWeb")
USER, PASSWORD = "xrayage", "pw-8c1f-loopback-only"
N_RADIOGRAPHS = 20

needs_orthanc = [
    pytest.mark.orthanc, pytest.mark.data,
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc binary not found (apt-get install "
                       "orthanc; CI installs it)"),
    pytest.mark.skipif(DICOMWEB is None, reason="Orthanc DICOMweb plugin not found (apt-get "
                       "install orthanc-dicomweb; CI installs it)"),
]


def with_orthanc(test: Any) -> Any:
    """Mark a test that runs a real Orthanc with the DICOMweb plugin."""
    for mark in needs_orthanc:
        test = mark(test)
    return test


# -- the corpus (shared with test_orthanc_plugin.py) -------------------------------------


@dataclass
class Corpus:
    files: list[Path]
    frontal: set[str]        # SOP Instance UIDs that must be answered
    refused: dict[str, str]  # SOP Instance UID -> expected refusal ("lateral_view", "CT")
    secrets: set[str]        # patient names, IDs, dates and every UID of the sources


def build_corpus(out: Path, estimator: XRayAge) -> Corpus:
    """20 real radiographs the model answers, a lateral (in a frontal's study) and a CT."""
    from .conftest import MANIFEST, SHARED_DATA
    from .shared import NEMA, SIIM

    files: list[Path] = []
    for source in (SIIM, NEMA):  # storescu proposes uncompressed syntaxes: transcode them
        ds = dcmread(source)
        ds.decompress(generate_instance_uid=False)
        files.append(out / source.name)
        ds.save_as(files[-1], enforce_file_format=True)
    with open(MANIFEST, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"
                and float(r["age_years"]) >= 25 and r["view"] in ("PA", "AP")]
    study = generate_uid()
    for i, row in enumerate(rows):
        if len(files) == N_RADIOGRAPHS:
            break
        if i % 2 == 0:  # two radiographs per study
            study = generate_uid()
        pixels = np.asarray(Image.open(SHARED_DATA / row["path"]).convert("L"))
        ds = make_dataset(
            pixels, PatientName=f"Web^Patient{i // 2:04d}", PatientID=f"WEBPID{i // 2:05d}",
            PatientSex=row["sex"] or "O", PatientAge=f"{int(float(row['age_years'])):03d}Y",
            ViewPosition=row["view"], StudyDate=f"2019{1 + (i // 2) % 12:02d}15",
            StudyInstanceUID=study, PatientBirthDate="19551103",
            AccessionNumber=f"WACC{i // 2:06d}")
        ds.BitsStored, ds.HighBit = 8, 7
        path = out / f"nih{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if estimator.predict(path).xray_age is not None:
            files.append(path)
        else:
            path.unlink()
    assert len(files) == N_RADIOGRAPHS
    frontal = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    first = dcmread(files[2], stop_before_pixels=True)
    lateral_png = sorted((SHARED_DATA / "qc" / "lateral").glob("*.png"))[0]
    lateral = make_dataset(
        np.asarray(Image.open(lateral_png).convert("L")), ViewPosition="LL",
        StudyInstanceUID=first.StudyInstanceUID, PatientName=first.PatientName,
        PatientID=first.PatientID, PatientAge=first.PatientAge, StudyDate=first.StudyDate,
        SeriesNumber=2)
    lateral.BitsStored, lateral.HighBit = 8, 7
    ct_png = sorted((SHARED_DATA / "qc" / "not_radiograph").glob("covidct_*.png"))[0]
    ct = make_dataset(np.asarray(Image.open(ct_png).convert("L")), Modality="CT",
                      SOPClassUID=CTImageStorage, BodyPartExamined="CHEST",
                      PatientName="Ct^Patient", PatientID="WEBCT0001", PatientAge="061Y",
                      ViewPosition=None, StudyDate="20190301")
    ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ct.BitsStored, ct.HighBit = 8, 7
    refused = {}
    for name, ds, why in (("lateral.dcm", lateral, "lateral_view"), ("ct.dcm", ct, "CT")):
        files.append(out / name)
        ds.save_as(files[-1], enforce_file_format=True)
        refused[str(ds.SOPInstanceUID)] = why
    secrets = set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "PatientID", "AccessionNumber", "PatientName", "PatientBirthDate",
                        "StudyDate"):
            if ds.get(keyword):
                secrets.add(str(ds.get(keyword)))
    return Corpus(files, frontal, refused, {s for s in secrets if len(s) >= 5})


def expected_sr_uids(corpus: Corpus, estimator: XRayAge) -> set[str]:
    """The SR SOP Instance UIDs every way in must store (derived, see node.result_uid)."""
    model = model_label(estimator.card)
    return {result_uid(uid, model, "sr") for uid in corpus.frontal}


# -- a real Orthanc -----------------------------------------------------------------------


class OrthancServer:
    """Orthanc on loopback with plugins; ``settings`` are merged into its configuration."""

    def __init__(self, root: Path, plugins: list[Path], **settings: Any) -> None:
        self.root, self.http_port, self.dicom_port = root, free_port(), free_port()
        self.auth = (USER, PASSWORD) if settings.get("AuthenticationEnabled") else None
        config = {
            "Name": "xrayage-test", "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"), "Plugins": [str(p) for p in plugins],
            "LuaScripts": [], "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": True,
            "DicomAet": "ORTHANC", "DicomPort": self.dicom_port, "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
            "DicomCheckCalledAet": True, "ConcurrentJobs": 1, "HttpThreadsCount": 4,
            "SaveJobs": False, "StableAge": 1, "StorageCompression": False,
            "HttpDescribeErrors": True,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": "127.0.0.1"},
            **settings,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = root / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30,
                                   auth=self.auth)

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([str(ORTHANC), str(self.root / "orthanc.json")],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.get("/system").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.tail()
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.client.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def upload(self, files: list[Path]) -> None:
        for path in files:
            r = self.client.post("/instances", content=path.read_bytes())
            assert r.status_code == 200, r.text

    def srs(self) -> list[Any]:
        """Every SR instance Orthanc holds (parsed)."""
        found = self.client.post("/tools/find", json={
            "Level": "Instance", "Query": {"Modality": "SR"}}).json()
        return [dcmread(io.BytesIO(self.client.get(f"/instances/{i}/file").content))
                for i in found]


def check_srs(orthanc: OrthancServer, corpus: Corpus, estimator: XRayAge,
              tmp: Path) -> dict[str, float]:
    """Orthanc holds exactly one SR per frontal instance, in its study, valid by dciodvfy;
    return the X-ray age of each source SOP Instance UID."""
    srs = orthanc.srs()
    sources = [read_dicom_sr(sr).source_sop_instance_uid for sr in srs]
    assert sorted(sources) == sorted(corpus.frontal)  # one each; none for lateral or CT
    assert {str(sr.SOPInstanceUID) for sr in srs} == expected_sr_uids(corpus, estimator)
    studies = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID):
               str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in corpus.files}
    ages = {}
    for sr in srs:
        values = read_dicom_sr(sr)
        assert str(sr.StudyInstanceUID) == studies[values.source_sop_instance_uid]
        ages[values.source_sop_instance_uid] = float(values.xray_age)
    for sr in srs:  # every SR as the archive holds it
        path = tmp / f"{sr.SOPInstanceUID}.dcm"
        sr.save_as(path, enforce_file_format=True)
        errors, _ = dciodvfy(path)
        assert errors == [], errors
    return ages




def cli_argv() -> list[str]:
    cli = Path(sys.executable).with_name("xrayage")
    return [str(cli)] if cli.exists() else [sys.executable, "-m", "xrayage.cli.main"]

