"""``xrayage dicomweb`` against a real Orthanc with its DICOMweb plugin (Debian packages).

Orthanc (loopback, basic authentication, the ``orthanc-dicomweb`` plugin) holds 22 real
instances: 20 radiographs (the shared SIIM and NEMA DICOMs, and DX made from 18 shared NIH
PNGs of adults) plus a lateral (in a frontal's study) and a CT. ``xrayage dicomweb`` finds
them by QIDO-RS, fetches them by WADO-RS and stores SRs by STOW-RS: exactly one per frontal
adult chest instance, none on a second run, the same set after a run killed part-way and
restarted; dciodvfy finds no error in what it stored. The corpus and the Orthanc helper are
in ``pacs_support.py``, shared with ``test_orthanc_plugin.py``. Skipped when Orthanc or the
plugin is not installed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom", reason="needs the 'serve' extra")
pytest.importorskip("highdicom", reason="needs the 'clinical' extra")
pytest.importorskip("dicomweb_client", reason="needs the 'serve' extra (dicomweb-client)")

from pydicom import dcmread
from pydicom.uid import generate_uid

from xrayage import XRayAge
from xrayage.outputs import read_dicom_sr
from xrayage.serve.dicomweb import (
    Credentials,
    DicomWebWorker,
    Query,
    read_credentials,
)
from xrayage.serve.node import model_label, result_uid

from .clinical_helpers import dciodvfy
from .onnx_factory import build_tiny_model
from .pacs_support import (
    DICOMWEB,
    N_RADIOGRAPHS,
    PASSWORD,
    USER,
    Corpus,
    OrthancServer,
    build_corpus,
    check_srs,
    cli_argv,
    with_orthanc,
)

pytestmark = [pytest.mark.timeout(300)]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny(model_dir: Path) -> XRayAge:
    return XRayAge.load(model_dir, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny: XRayAge,
           shared_data: Path) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("corpus"), tiny)


@pytest.fixture
def orthanc(tmp_path: Path, corpus: Corpus) -> Iterator[OrthancServer]:
    """Orthanc with the DICOMweb plugin, basic auth, and the 22 instances stored."""
    assert DICOMWEB is not None
    server = OrthancServer(tmp_path, [DICOMWEB], AuthenticationEnabled=True,
                           RegisteredUsers={USER: PASSWORD})
    server.start()
    try:
        server.upload(corpus.files)
        yield server
    finally:
        server.close()


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "pacs.auth"
    path.write_text(f"basic {USER}:{PASSWORD}\n")
    path.chmod(0o600)
    return path



def run_cli(orthanc: OrthancServer, auth_file: Path, state: Path, model_dir: Path,
            *extra: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_argv(), "-v", "dicomweb", orthanc.dicomweb_url, "--auth-file", str(auth_file),
         "--state", str(state), "--model", str(model_dir), "--threads", "1", *extra],
        capture_output=True, text=True, timeout=timeout_s, check=False)


def answered_in(state: Path) -> int:
    try:
        data = json.loads(state.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return sum(e.get("outcome") == "answered" for e in data["instances"].values())


# -- tests ----------------------------------------------------------------------------------


@with_orthanc
def test_one_sr_per_frontal_then_none(orthanc: OrthancServer, corpus: Corpus, tiny: XRayAge,
                                      model_dir: Path, auth_file: Path,
                                      tmp_path: Path) -> None:
    """A date-range run, a full run, then a second full run that stores nothing."""
    state = tmp_path / "state.json"
    in_range = run_cli(orthanc, auth_file, state, model_dir, "--from", "2019-01-01",
                       "--to", "2019-02-28")
    assert in_range.returncode == 0, in_range.stderr
    headers = [dcmread(p, stop_before_pixels=True) for p in corpus.files]
    early = [ds for ds in headers if "20190101" <= ds.get("StudyDate", "") <= "20190228"
             and str(ds.SOPInstanceUID) in corpus.frontal]
    assert 0 < len(early) < N_RADIOGRAPHS
    assert len(orthanc.srs()) == answered_in(state) == len(early)

    first = run_cli(orthanc, auth_file, state, model_dir)
    assert first.returncode == 0, first.stderr
    ages = check_srs(orthanc, corpus, tiny, tmp_path)
    assert f"answered {N_RADIOGRAPHS - len(early)}" in first.stderr
    both = in_range.stderr + first.stderr  # the lateral shares an early study
    assert "rejected 1" in both  # the lateral; the CT is no CR/DX, never fetched
    assert both.count("refused by the quality checks (lateral_view") == 1
    assert "unreadable" not in both
    for path in corpus.files[:3]:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert ages[uid] == pytest.approx(tiny.predict(path).xray_age, abs=0.01)

    again = run_cli(orthanc, auth_file, state, model_dir)
    assert again.returncode == 0, again.stderr
    assert "stored by STOW-RS" not in again.stderr and "answered" not in again.stderr
    assert f"skipped {N_RADIOGRAPHS + 1}" in again.stderr
    assert len(orthanc.srs()) == N_RADIOGRAPHS
    text = in_range.stderr + first.stderr + again.stderr
    leaked = sorted(s for s in corpus.secrets if s in text)
    assert leaked == [], f"patient identifiers in the log: {leaked[:5]}"
    assert PASSWORD not in text


@with_orthanc
def test_killed_part_way_then_restarted(orthanc: OrthancServer, corpus: Corpus,
                                        tiny: XRayAge, model_dir: Path, auth_file: Path,
                                        tmp_path: Path) -> None:
    """SIGKILL mid-run (no chance to clean up), then a new run: the same SRs, once each."""
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [*cli_argv(), "-vv", "dicomweb", orthanc.dicomweb_url, "--auth-file", str(auth_file),
         "--state", str(state), "--model", str(model_dir), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while answered_in(state) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, killed_log = proc.communicate(timeout=30)
    done_before = answered_in(state)
    assert 5 <= done_before < N_RADIOGRAPHS
    again = run_cli(orthanc, auth_file, state, model_dir)
    assert again.returncode == 0, again.stderr
    check_srs(orthanc, corpus, tiny, tmp_path)
    assert answered_in(state) == N_RADIOGRAPHS
    sent = killed_log.count("stored by STOW-RS") + again.stderr.count("stored by STOW-RS")
    assert N_RADIOGRAPHS <= sent <= N_RADIOGRAPHS + 1  # at most the one in hand, same UID
    assert "DEBUG urllib3" in killed_log  # -vv logged the HTTP requests, UIDs redacted:
    leaked = sorted(s for s in corpus.secrets if s in killed_log + again.stderr)
    assert leaked == [], f"patient identifiers in the log: {leaked[:5]}"


@with_orthanc
def test_sigterm_stops_between_instances(orthanc: OrthancServer, corpus: Corpus,
                                         model_dir: Path, auth_file: Path,
                                         tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [*cli_argv(), "dicomweb", orthanc.dicomweb_url, "--auth-file", str(auth_file),
         "--state", str(state), "--model", str(model_dir), "--threads", "1", "--watch",
         "--interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while answered_in(state) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    done = answered_in(state)
    assert len(orthanc.srs()) == done  # what is stored is recorded, and nothing more


@with_orthanc
def test_wrong_password_stores_and_records_nothing(orthanc: OrthancServer, model_dir: Path,
                                                   tmp_path: Path) -> None:
    bad = tmp_path / "bad.auth"
    bad.write_text(f"basic {USER}:not-the-password\n")
    bad.chmod(0o600)
    state = tmp_path / "state.json"
    run = run_cli(orthanc, bad, state, model_dir)
    assert run.returncode != 0
    assert "401" in run.stderr and "not-the-password" not in run.stderr
    assert answered_in(state) == 0 and orthanc.srs() == []


@with_orthanc
def test_compressed_instances_are_fetched_as_stored(tmp_path: Path, tiny: XRayAge) -> None:
    """JPEG 2000 and JPEG radiographs come back by WADO-RS untranscoded and are answered."""
    from xrayage.serve.dicomweb import make_client

    from .shared import NEMA, SIIM

    assert DICOMWEB is not None
    server = OrthancServer(tmp_path, [DICOMWEB])
    server.start()
    try:
        server.upload([NEMA, SIIM])
        worker = DicomWebWorker(make_client(server.dicomweb_url), tiny, tmp_path / "s.json")
        stats = worker.run_once(Query())
        assert (stats.answered, stats.stored) == (2, 2)
        ages = {read_dicom_sr(sr).source_sop_instance_uid: read_dicom_sr(sr).xray_age
                for sr in server.srs()}
        for source in (NEMA, SIIM):
            uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
            assert ages[uid] == pytest.approx(tiny.predict(source).xray_age, abs=0.01)
    finally:
        server.close()


# -- without Orthanc ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("basic alice:pa:ss\n", Credentials("basic", "alice", "pa:ss")),
    ("\nBearer tok.en-1\n", Credentials("bearer", "", "tok.en-1")),
])
def test_read_credentials(tmp_path: Path, text: str, expected: Credentials) -> None:
    path = tmp_path / "auth"
    path.write_text(text)
    path.chmod(0o600)
    creds = read_credentials(path)
    assert creds == expected
    assert expected.secret not in repr(creds)
    import requests

    session = requests.Session()
    creds.apply(session)
    if creds.scheme == "basic":
        assert session.auth == ("alice", "pa:ss")
    else:
        assert session.headers["Authorization"] == "Bearer tok.en-1"


def test_credentials_file_must_be_private_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("basic alice:secret\n")
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_credentials(path)
    path.chmod(0o600)
    path.write_text("alice:secret\n")
    with pytest.raises(ValueError, match="basic USER:PASSWORD"):
        read_credentials(path)


class FakeArchive:
    """A DICOMweb client stand-in: one study of `files`; STOW fails while `down` is set."""

    def __init__(self, files: list[Path]) -> None:
        self.items = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                      for p in files}
        self.study = generate_uid()
        self.stored: list[Any] = []
        self.down = threading.Event()

    def search_for_studies(self, **_: Any) -> list[dict[str, Any]]:
        return [{"0020000D": {"Value": [self.study]}}]

    def search_for_series(self, study: str, **_: Any) -> list[dict[str, Any]]:
        return [{"0020000E": {"Value": ["1.2.3"]}, "00080060": {"Value": ["DX"]}}]

    def search_for_instances(self, study: str, series: str, **_: Any) -> list[dict[str, Any]]:
        return [{"00080018": {"Value": [uid]}} for uid in self.items]

    def retrieve_instance(self, study: str, series: str, sop: str, **_: Any) -> Any:
        return dcmread(self.items[sop])

    def store_instances(self, datasets: list[Any], **_: Any) -> Any:
        import requests

        if self.down.is_set():
            raise requests.ConnectionError("archive down")
        self.stored += datasets
        return None


def test_transient_failure_is_retried_next_run_then_given_up(corpus: Corpus, tiny: XRayAge,
                                                              tmp_path: Path) -> None:
    archive = FakeArchive(corpus.files[:3])
    archive.down.set()
    worker = DicomWebWorker(archive, tiny, tmp_path / "s.json", max_attempts=2)
    stats = worker.run_once(Query())
    assert (stats.retry_later, stats.answered, archive.stored) == (3, 0, [])
    archive.down.clear()
    stats = DicomWebWorker(archive, tiny, tmp_path / "s.json").run_once(Query())
    assert stats.answered == 3 and len(archive.stored) == 3
    archive.down.set()  # nothing left to send: a second run never reaches the archive
    stats = DicomWebWorker(archive, tiny, tmp_path / "s.json").run_once(Query())
    assert stats.skipped == 3 and stats.failed == 0
    other = tmp_path / "other.json"
    for _ in range(2):
        stats = DicomWebWorker(archive, tiny, other, max_attempts=2).run_once(Query())
    assert stats.failed == 3  # recorded as failed after the last attempt
    assert DicomWebWorker(archive, tiny, other).run_once(Query()).skipped == 3


def test_state_file_holds_no_uid(corpus: Corpus, tiny: XRayAge, tmp_path: Path) -> None:
    archive = FakeArchive(corpus.files[:2])
    DicomWebWorker(archive, tiny, tmp_path / "s.json").run_once(Query())
    text = (tmp_path / "s.json").read_text()
    assert not [uid for uid in archive.items if uid in text]
    results = [r for e in json.loads(text)["instances"].values() for r in e["results"]]
    assert sorted(results) == sorted(str(ds.SOPInstanceUID) for ds in archive.stored)


def test_query_since_last_run_overrides_an_older_from() -> None:
    import datetime as dt

    q = Query(date_from=dt.date(2020, 1, 1), date_to=dt.date(2024, 12, 31),
              since_last_run=True)
    assert q.study_date(dt.date(2024, 6, 10)) == "20240609-20241231"
    assert q.study_date(None) == "20200101-20241231"
    assert Query().study_date(dt.date(2024, 6, 10)) is None



def test_sc_is_stored_too_and_valid(corpus: Corpus, tiny: XRayAge, tmp_path: Path) -> None:
    """``--sc``: the SR and the Secondary Capture, UIDs derived, both clean by dciodvfy."""
    archive = FakeArchive(corpus.files[:1])
    stats = DicomWebWorker(archive, tiny, tmp_path / "s.json", send_sc=True).run_once(Query())
    assert (stats.answered, stats.stored) == (1, 2)
    (source,) = archive.items
    model = model_label(tiny.card)
    assert [str(ds.SOPInstanceUID) for ds in archive.stored] == [
        result_uid(source, model, "sr"), result_uid(source, model, "sc")]
    for ds in archive.stored:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        errors, _ = dciodvfy(path)
        assert errors == [], errors
