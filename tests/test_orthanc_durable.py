"""The durable DICOM node end to end: dcmtk ``storescu`` -> ``xrayage dicom-node`` -> Orthanc.

100 real radiographs (DICOMs made from the shared NIH PNGs, plus the shared SIIM and NEMA
DICOMs) are sent by ``storescu`` in one association, and again in 8 parallel associations.
The node runs as a subprocess of the real CLI and is sent SIGTERM part-way, then started
again on the same spool and sent everything again (as a PACS retrying its job). Orthanc
must end with exactly 100 SRs, one per source instance. In a third run Orthanc is stopped
for 30 s mid-run and restarted: nothing is lost. The node runs at ``-vv`` and its whole
log (pynetdicom's DEBUG lines included) must hold no UID, name, ID or date of a patient.

All on loopback; skipped when ``storescu`` or ``Orthanc`` is absent.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="needs the 'serve' extra")
pytest.importorskip("highdicom", reason="needs the 'clinical' extra")

from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from xrayage import XRayAge
from xrayage.outputs import read_dicom_sr

from .dicom_factory import make_dataset
from .onnx_factory import build_tiny_model
from .pacs_support import ORTHANC, OrthancServer
from .serve_support import free_port
from .shared import NEMA, SIIM, SIIM_MONO1

STORESCU = shutil.which("storescu")
N_IMAGES = 100

pytestmark = [
    pytest.mark.orthanc, pytest.mark.slow, pytest.mark.data, pytest.mark.timeout(600),
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc binary not found (apt-get install "
                       "orthanc)"),
    pytest.mark.skipif(STORESCU is None, reason="storescu not found (apt-get install dcmtk)"),
]


@dataclass
class Corpus:
    files: list[Path]
    sop_uids: set[str]
    secrets: set[str]  # patient names, IDs, dates and every UID of the sources


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Corpus:
    """100 radiographs the model answers: NIH PNGs wrapped as DX, plus SIIM and NEMA."""
    from .conftest import MANIFEST, SHARED_DATA

    out = tmp_path_factory.mktemp("corpus")
    estimator = XRayAge.load(model_dir, threads=1)
    files = []
    for source in (SIIM, NEMA):  # storescu proposes uncompressed syntaxes: transcode them
        ds = dcmread(source)
        ds.decompress(generate_instance_uid=False)
        files.append(out / source.name)
        ds.save_as(files[-1], enforce_file_format=True)
    with open(MANIFEST, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"
                and float(r["age_years"]) >= 25 and r["view"] in ("PA", "AP")]
    for i, row in enumerate(rows):
        if len(files) == N_IMAGES:
            break
        pixels = np.asarray(Image.open(SHARED_DATA / row["path"]).convert("L"))
        ds = make_dataset(
            pixels, PatientName=f"Nih^Patient{i:04d}", PatientID=f"NIHPID{i:05d}",
            PatientSex=row["sex"] or "O", PatientAge=f"{int(float(row['age_years'])):03d}Y",
            ViewPosition=row["view"], StudyDate=f"2019{1 + i % 12:02d}{1 + i % 28:02d}",
            PatientBirthDate="19551103", AccessionNumber=f"ACCN{i:06d}")
        ds.BitsStored, ds.HighBit = 8, 7
        path = out / f"nih{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if estimator.predict(path).xray_age is not None:
            files.append(path)
        else:
            path.unlink()
    assert len(files) == N_IMAGES
    sop_uids, secrets = set(), set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        sop_uids.add(str(ds.SOPInstanceUID))
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "PatientID", "AccessionNumber"):
            if ds.get(keyword):
                secrets.add(str(ds.get(keyword)))
        for keyword in ("PatientName", "PatientBirthDate", "StudyDate"):
            if ds.get(keyword):
                secrets.add(str(ds.get(keyword)))
    assert len(sop_uids) == N_IMAGES
    return Corpus(files, sop_uids, {s for s in secrets if len(s) >= 5})


def instance_count(orthanc: OrthancServer) -> int:
    """Instances Orthanc holds (-1 while it does not answer)."""
    try:
        return len(orthanc.client.get("/instances").json())
    except httpx.TransportError:
        return -1


def sources_of_srs(orthanc: OrthancServer) -> list[str]:
    """The source SOP Instance UID of every SR stored (duplicates kept); all are SRs."""
    srs = orthanc.srs()
    assert len(srs) == instance_count(orthanc)
    return [read_dicom_sr(ds).source_sop_instance_uid for ds in srs]


class Node:
    """``xrayage -vv dicom-node`` as a subprocess (so SIGTERM is the real signal)."""

    def __init__(self, root: Path, port: int, model_dir: Path, forward_port: int) -> None:
        self.root, self.port, self.model_dir, self.forward_port = root, port, model_dir, \
            forward_port
        self.spool = root / "spool"
        self.log = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> None:
        cli = Path(sys.executable).with_name("xrayage")
        argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "xrayage.cli.main"]
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.offset = log.tell()
        self.proc = subprocess.Popen(
            [*argv, "-vv", "dicom-node", "--port", str(self.port), "--model",
             str(self.model_dir), "--threads", "1", "--spool", str(self.spool),
             "--forward", f"127.0.0.1:{self.forward_port}:ORTHANC", "--retry-initial", "0.5",
             "--retry-max", "4", "--send-attempts", "40", "--stop-grace", "10"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + 60
        while "listening on" not in self.xrayage_lines():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.tail()
            time.sleep(0.2)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(40)
        self.proc = None
        return code

    def done(self) -> int:
        return len(list((self.spool / "done").glob("*.json")))

    def queued(self) -> int:
        return len(list((self.spool / "queue").glob("*.dcm")))

    def dead(self) -> list[Path]:
        return sorted((self.spool / "dead").glob("*.json"))

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def xrayage_lines(self) -> str:
        """xrayage's own lines since the last start."""
        with open(self.log, "rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
        return "\n".join(line for line in text.splitlines() if "xrayage" in line)


def storescu(port: int, files: list[Path], parallel: int) -> list[subprocess.Popen[bytes]]:
    chunks = [files[i::parallel] for i in range(parallel)]
    return [subprocess.Popen([str(STORESCU), "-R", "-aet", "MODALITY", "-aec", "XRAYAGE",
                              "127.0.0.1", str(port), *map(str, chunk)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for chunk in chunks]


def wait_for(predicate: object, timeout_s: float, what: str, node: Node) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{node.tail()}"
        time.sleep(0.2)


@pytest.fixture
def setup(tmp_path: Path, model_dir: Path) -> Iterator[tuple[Node, OrthancServer]]:
    node_port = free_port()
    # only the xrayage node, from loopback, may store into it
    orthanc = OrthancServer(tmp_path, [], DicomModalities={
        "xrayage": ["XRAYAGE", "127.0.0.1", node_port]})
    node = Node(tmp_path, node_port, model_dir, orthanc.dicom_port)
    orthanc.start()
    try:
        yield node, orthanc
    finally:
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)
        orthanc.close()


def check_exactly_once(node: Node, orthanc: OrthancServer, corpus: Corpus) -> None:
    wait_for(lambda: node.done() >= N_IMAGES and node.queued() == 0, 240, "the spool to drain",
             node)
    wait_for(lambda: instance_count(orthanc) >= N_IMAGES, 60, "100 SRs in Orthanc", node)
    time.sleep(2)  # nothing more may arrive
    sources = sources_of_srs(orthanc)
    assert len(sources) == N_IMAGES
    assert sorted(sources) == sorted(corpus.sop_uids)  # one each, none duplicated
    assert node.dead() == []
    text = node.log.read_text(errors="replace")
    assert "DEBUG pynetdicom" in text  # -vv really logged the library's debug lines
    leaked = sorted(s for s in corpus.secrets if s in text)
    assert leaked == [], f"patient identifiers in the node's log: {leaked[:5]}"


@pytest.mark.parametrize("parallel", [1, 8], ids=["one-association", "8-associations"])
def test_sigterm_part_way_then_restart(setup: tuple[Node, OrthancServer], corpus: Corpus,
                                       parallel: int) -> None:
    node, orthanc = setup
    node.start()
    senders = storescu(node.port, corpus.files, parallel)
    wait_for(lambda: node.done() >= 25, 120, "25 instances done", node)
    assert node.terminate() == 0
    assert "stopped" in node.xrayage_lines()
    for sender in senders:  # aborted by the stop, or finished
        sender.wait(60)
    acknowledged_left = node.queued()
    assert node.done() < N_IMAGES or acknowledged_left == 0
    node.start()  # the same spool: resumes what was acknowledged and not answered
    if acknowledged_left:
        assert f"resuming {acknowledged_left} spooled" in node.xrayage_lines()
    for sender in storescu(node.port, corpus.files, parallel):  # the PACS retries its job
        assert sender.wait(180) == 0
    check_exactly_once(node, orthanc, corpus)
    assert node.terminate() == 0
    # sent once each, across both starts: not merely deduplicated by Orthanc
    assert node.log.read_text(errors="replace").count("result object(s) sent to") == N_IMAGES


def test_destination_down_for_30_s_loses_nothing(setup: tuple[Node, OrthancServer],
                                                  corpus: Corpus) -> None:
    node, orthanc = setup
    node.start()
    senders = storescu(node.port, corpus.files, 1)
    wait_for(lambda: instance_count(orthanc) >= 20, 120, "20 SRs", node)
    orthanc.stop()
    down_since = time.monotonic()
    for sender in senders:  # the node keeps accepting while the PACS is down
        assert sender.wait(180) == 0
    time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
    assert "failed (no association" in node.xrayage_lines()  # it tried, and retries
    orthanc.start()
    check_exactly_once(node, orthanc, corpus)
    assert node.terminate() == 0


def test_corpus_holds_100_distinct_instances(corpus: Corpus) -> None:
    """The corpus itself: 100 distinct instances (the SIIM MONOCHROME1 copy shares a UID)."""
    mono1 = dcmread(SIIM_MONO1, stop_before_pixels=True)
    assert str(mono1.SOPInstanceUID) in corpus.sop_uids  # a duplicate of SIIM, left out
    assert generate_uid() not in corpus.sop_uids
