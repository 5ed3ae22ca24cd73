"""The Orthanc plugin (``orthanc-python``): Orthanc itself answers stored chest radiographs.

Orthanc starts with ``xrayage/serve/orthanc_plugin.py`` as its ``PythonScript`` (Debian's
embedded Python 3) and the tiny test model; the plugin's worker process runs in this
virtual environment. The corpus of ``test_dicomweb.py`` (20 real radiographs, a lateral and
a CT) is sent by dcmtk ``storescu``; Orthanc must end with the same SRs as the DICOMweb
worker stores (the same UIDs), whose X-ray ages match ``xrayage predict`` to 0.01 y, with
one log line per refusal, none naming a patient, and dciodvfy finding no error. A second
test stops Orthanc part-way and starts it again: the plugin resumes from its state file.

Unit tests of the plugin's logic (a stand-in for the ``orthanc`` module) run without
Orthanc. Skipped when Orthanc, the Python plugin or ``storescu`` is not installed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom", reason="needs the 'serve' extra")
pytest.importorskip("highdicom", reason="needs the 'clinical' extra")
pytest.importorskip("dicomweb_client", reason="needs the 'serve' extra (dicomweb-client)")

from pydicom import dcmread

import xrayage.serve.orthanc_plugin as plugin_module
from xrayage import XRayAge
from xrayage.outputs import read_dicom_sr
from xrayage.serve.node import instance_tag
from xrayage.serve.orthanc_plugin import (
    PluginConfig,
    WorkerError,
    WorkerProcess,
    XRayAgePlugin,
    read_frame,
    write_frame,
)

from .dicom_factory import make_dataset, to_bytes
from .onnx_factory import build_tiny_model
from .pacs_support import (
    ORTHANC,
    Corpus,
    OrthancServer,
    build_corpus,
    check_srs,
    cli_argv,
    orthanc_plugin,
)

PYTHON_PLUGIN = orthanc_plugin("libOrthancPython")
STORESCU = shutil.which("storescu")

pytestmark = [pytest.mark.timeout(300)]


def with_orthanc(test: Any) -> Any:
    """Mark a test that runs a real Orthanc with the Python plugin and storescu."""
    for mark in (
        pytest.mark.orthanc, pytest.mark.data,
        pytest.mark.skipif(ORTHANC is None, reason="Orthanc binary not found (apt-get "
                           "install orthanc; CI installs it)"),
        pytest.mark.skipif(PYTHON_PLUGIN is None, reason="Orthanc Python plugin not found "
                           "(apt-get install orthanc-python; CI installs it)"),
        pytest.mark.skipif(STORESCU is None, reason="storescu not found (apt-get install "
                           "dcmtk)"),
    ):
        test = mark(test)
    return test


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
def orthanc(tmp_path: Path, model_dir: Path) -> Iterator[OrthancServer]:
    """Orthanc with the xrayage plugin; only storescu's AE (from loopback) may store."""
    assert PYTHON_PLUGIN is not None
    server = OrthancServer(
        tmp_path, [PYTHON_PLUGIN], PythonScript=plugin_module.__file__,
        PythonVerbose=False, DicomModalities={"modality": ["MODALITY", "127.0.0.1", 104]},
        XRayAge={"Python": sys.executable, "Model": str(model_dir), "Threads": 1,
                 "PollSeconds": 1, "TimeoutSeconds": 120})
    server.start()
    try:
        yield server
    finally:
        server.close()


def storescu(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    assert STORESCU is not None
    return subprocess.Popen([STORESCU, "-aet", "MODALITY", "-aec", "ORTHANC", "127.0.0.1",
                             str(port), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def xrayage_lines(orthanc: OrthancServer) -> list[str]:
    return [ln for ln in orthanc.log.read_text(errors="replace").splitlines()
            if "xrayage:" in ln]


def wait_for_srs(orthanc: OrthancServer, n: int, timeout_s: float) -> int:
    """Wait until Orthanc holds `n` SRs or more; how many it holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = len(orthanc.client.post("/tools/find", json={
                "Level": "Instance", "Query": {"Modality": "SR"}}).json())
        except Exception:
            found = -1
        if found >= n:
            return found
        assert time.monotonic() < deadline, f"{found} of {n} SRs\n{orthanc.tail()}"
        time.sleep(0.3)


def wait_caught_up(orthanc: OrthancServer, timeout_s: float) -> None:
    """Wait until the plugin has handled every change Orthanc has logged."""
    state = orthanc.root / "db" / "xrayage-plugin.json"
    deadline = time.monotonic() + timeout_s
    while True:
        last = orthanc.client.get("/changes", params={"last": ""}).json()["Last"]
        seq = json.loads(state.read_text())["seq"] if state.exists() else -1
        if seq >= last:
            return
        assert time.monotonic() < deadline, f"plugin at {seq} of {last}\n{orthanc.tail()}"
        time.sleep(0.3)


def predict_cli(model_dir: Path, files: list[Path], out: Path) -> dict[str, float]:
    """X-ray ages by ``xrayage predict`` (the CLI), keyed by SOP Instance UID."""
    run = subprocess.run([*cli_argv(), "predict", "--model", str(model_dir), "--threads", "1",
                          "-o", str(out), *map(str, files)], capture_output=True, text=True,
                         timeout=180, check=False)
    assert out.exists(), run.stderr
    with open(out, newline="") as handle:
        rows = {r["path"]: r for r in csv.DictReader(handle)}
    ages = {}
    for path in files:
        row = rows[str(path)]
        if row["xray_age"]:
            ages[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = float(
                row["xray_age"])
    return ages


@with_orthanc
def test_storescu_to_orthanc_same_srs_as_predict(orthanc: OrthancServer, corpus: Corpus,
                                                 tiny: XRayAge, model_dir: Path,
                                                 tmp_path: Path) -> None:
    sender = storescu(orthanc.dicom_port, corpus.files)
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    wait_for_srs(orthanc, len(corpus.frontal), 180)
    wait_caught_up(orthanc, 60)
    time.sleep(2)  # nothing more may arrive
    ages = check_srs(orthanc, corpus, tiny, tmp_path)  # one each, same UIDs, dciodvfy clean
    expected = predict_cli(model_dir, corpus.files, tmp_path / "predict.csv")
    assert set(expected) == corpus.frontal
    assert max(abs(ages[uid] - expected[uid]) for uid in expected) <= 0.01
    lines = xrayage_lines(orthanc)
    refusals = [ln for ln in lines if "refused by the quality checks" in ln]
    lateral = next(uid for uid, why in corpus.refused.items() if why == "lateral_view")
    assert len(refusals) == 1 and instance_tag(lateral) in refusals[0]
    assert "lateral_view" in refusals[0] and refusals[0].startswith("W")  # a warning
    text = "\n".join(lines)
    leaked = sorted(s for s in corpus.secrets if s in text)
    assert leaked == [], f"patient identifiers in the plugin's log: {leaked[:5]}"
    assert not any(ln.startswith("E") for ln in lines), text


@with_orthanc
@pytest.mark.slow
def test_orthanc_restarted_part_way_resumes(orthanc: OrthancServer, corpus: Corpus,
                                            tiny: XRayAge, tmp_path: Path) -> None:
    sender = storescu(orthanc.dicom_port, corpus.files)
    assert sender.wait(120) == 0
    before_stop = wait_for_srs(orthanc, 3, 120)
    orthanc.stop()  # ORTHANC_STOPPED: the plugin finishes the instance in hand
    assert before_stop < len(corpus.frontal), "the stop was not part-way"
    state = json.loads((tmp_path / "db" / "xrayage-plugin.json").read_text())
    assert state["seq"] > 0
    orthanc.start()
    wait_for_srs(orthanc, len(corpus.frontal), 180)
    wait_caught_up(orthanc, 60)
    time.sleep(2)
    check_srs(orthanc, corpus, tiny, tmp_path)
    lines = xrayage_lines(orthanc)
    assert sum("refused by the quality checks" in ln for ln in lines) == 1
    assert f"following Orthanc's changes from {state['seq']};" in "\n".join(lines)


# -- the plugin's logic, without Orthanc -------------------------------------------------


class FakeOrthanc:
    """The few ``orthanc`` module functions the plugin calls."""

    class ChangeType:
        NEW_INSTANCE, ORTHANC_STARTED, ORTHANC_STOPPED = 1, 2, 3

    def __init__(self, instances: dict[str, tuple[str, bytes]]) -> None:
        self.instances = instances  # id -> (modality, bytes)
        self.posted: list[bytes] = []
        self.logs: list[tuple[str, str]] = []

    def RestApiGet(self, uri: str) -> Any:  # noqa: N802 - Orthanc's names
        if uri == "/changes?last":
            return json.dumps({"Changes": [], "Done": True, "Last": len(self.instances)})
        if uri.startswith("/changes"):
            since = int(uri.split("since=")[1].split("&")[0])
            ids = list(self.instances)
            changes = [{"ChangeType": "NewInstance", "ID": i, "Seq": n + 1}
                       for n, i in enumerate(ids) if n + 1 > since]
            return json.dumps({"Changes": changes, "Done": True, "Last": len(ids)})
        parts = uri.split("/")
        modality, data = self.instances[parts[2]]
        if uri.endswith("/file"):
            return data
        if uri.endswith("/series"):
            return json.dumps({"MainDicomTags": {"Modality": modality}})
        uid = str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        return json.dumps({"MainDicomTags": {"SOPInstanceUID": uid}})

    def RestApiPost(self, uri: str, body: bytes) -> str:  # noqa: N802
        self.posted.append(body)
        return "{}"

    def LogInfo(self, text: str) -> None:  # noqa: N802
        self.logs.append(("I", text))

    def LogWarning(self, text: str) -> None:  # noqa: N802
        self.logs.append(("W", text))

    def LogError(self, text: str) -> None:  # noqa: N802
        self.logs.append(("E", text))


def test_plugin_logic_with_the_real_worker(tmp_path: Path, tiny: XRayAge,
                                           model_dir: Path) -> None:
    """Frontal answered, lateral refused in one warning, CT skipped; state resumes."""
    frontal = to_bytes(make_dataset())
    lateral = to_bytes(make_dataset(ViewPosition="LL"))
    ct = to_bytes(make_dataset(Modality="CT"))
    api = FakeOrthanc({"a": ("DX", frontal), "b": ("DX", lateral), "c": ("CT", ct)})
    config = PluginConfig(python=sys.executable, state_file=tmp_path / "state.json",
                          model=str(model_dir), threads=1)
    plugin = XRayAgePlugin(api, config)
    try:
        assert plugin.drain() == 3
    finally:
        plugin.worker.close()
    assert plugin.counts == {"answered": 1, "rejected": 1, "unreadable": 0, "skipped": 1,
                             "failed": 0}
    (sr,) = [dcmread(io.BytesIO(b)) for b in api.posted]
    assert read_dicom_sr(sr).xray_age == pytest.approx(tiny.predict(frontal).xray_age,
                                                       abs=0.01)
    warnings = [t for level, t in api.logs if level == "W"]
    assert len(warnings) == 1 and "lateral_view" in warnings[0]
    assert json.loads(config.state_file.read_text())["seq"] == 3
    again = XRayAgePlugin(api, config)
    again.start()  # resumes at the saved sequence number
    try:
        time.sleep(0.5)
        assert again.seq == 3 and len(api.posted) == 1  # nothing twice
    finally:
        again.stop()


def test_plugin_first_start_begins_at_the_end_unless_backfill(tmp_path: Path) -> None:
    api = FakeOrthanc({"a": ("CR", b""), "b": ("CR", b"")})
    for backfill, handled in ((False, 0), (True, 2)):
        config = PluginConfig(python=sys.executable, backfill=backfill,
                              state_file=tmp_path / f"{backfill}.json")
        plugin = XRayAgePlugin(api, config, BrokenWorker())
        plugin.start()
        time.sleep(0.5)
        plugin.stop()
        assert json.loads(config.state_file.read_text())["seq"] == 2
        assert plugin.counts["skipped"] == handled  # the fake's instances are not DICOM


class BrokenWorker(WorkerProcess):
    def __init__(self) -> None:
        super().__init__(["false"], 1.0)
        self.calls = 0

    def estimate(self, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        self.calls += 1
        raise WorkerError("worker process failed (EOFError: worker exited)")


def test_plugin_worker_failure_is_retried_then_logged(tmp_path: Path) -> None:
    api = FakeOrthanc({"a": ("CR", to_bytes(make_dataset()))})
    config = PluginConfig(python=sys.executable, state_file=tmp_path / "s.json",
                          max_attempts=2)
    worker = BrokenWorker()
    plugin = XRayAgePlugin(api, config, worker)
    assert plugin.drain() == 1
    assert worker.calls == 2 and plugin.counts["failed"] == 1
    assert [level for level, _ in api.logs] == ["W", "E"]


@pytest.mark.parametrize("sc", [False, True], ids=["sr", "sr+sc"])
def test_worker_process_protocol(model_dir: Path, tiny: XRayAge, sc: bool) -> None:
    config = PluginConfig(python=sys.executable, state_file=Path("unused"),
                          model=str(model_dir), threads=1, secondary_capture=sc)
    worker = WorkerProcess(config.worker_argv(), 120)
    try:
        data = to_bytes(make_dataset())
        header, blobs = worker.estimate(data)
        assert header["outcome"] == "answered" and len(blobs) == header["results"] == 1 + sc
        assert header["xray_age"] == pytest.approx(tiny.predict(data).xray_age, abs=1e-6)
        assert [dcmread(io.BytesIO(b)).Modality for b in blobs] == ["SR", "OT"][:1 + sc]
        header, blobs = worker.estimate(b"not a dicom file")
        assert header["outcome"] == "unreadable" and blobs == []
    finally:
        worker.close()


def test_frames_round_trip() -> None:
    buf = io.BytesIO()
    for blob in (b"", b"x" * 70_000):
        write_frame(buf, blob)
    buf.seek(0)
    assert [read_frame(buf), read_frame(buf), read_frame(buf)] == [b"", b"x" * 70_000, None]
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(b"\x00\x00\x00\x05abc"))


def test_plugin_config_needs_an_interpreter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"XRayAge\.Python"):
        PluginConfig.from_orthanc({"XRayAge": {}})
    config = PluginConfig.from_orthanc({"StorageDirectory": str(tmp_path), "XRayAge": {
        "Python": sys.executable, "Model": "m", "Threads": 2, "SecondaryCapture": True}})
    assert config.state_file == tmp_path / "xrayage-plugin.json"
    assert config.worker_argv() == [sys.executable, "-m", "xrayage.serve.orthanc_worker",
                                    "--model", "m", "--threads", "2", "--sc"]
    assert plugin_module.instance_tag("1.2.3") == instance_tag("1.2.3")


class CannedWorker(WorkerProcess):
    def __init__(self) -> None:
        super().__init__(["true"], 1.0)

    def ensure_started(self) -> None:
        pass

    def estimate(self, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        return {"outcome": "answered", "results": 1, "log": "instance t: computed"}, [b"sr"]


def test_plugin_store_failure_is_logged_and_passed(tmp_path: Path) -> None:
    api = FakeOrthanc({"a": ("DX", to_bytes(make_dataset())),
                       "b": ("DX", to_bytes(make_dataset()))})

    def refuse(uri: str, body: bytes) -> str:
        raise RuntimeError("disk full")

    api.RestApiPost = refuse  # type: ignore[method-assign]
    config = PluginConfig(python=sys.executable, state_file=tmp_path / "s.json")
    plugin = XRayAgePlugin(api, config, CannedWorker())
    assert plugin.drain() == 2 and plugin.counts["failed"] == 2
    errors = [t for level, t in api.logs if level == "E"]
    assert len(errors) == 2 and all("storing its result failed" in t for t in errors)
    assert json.loads(config.state_file.read_text())["seq"] == 2
