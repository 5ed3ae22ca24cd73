"""The DICOM node: C-ECHO, C-STORE in, SR (and SC) out to a forward SCP, rejects, logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom", reason="needs the 'serve' extra")
pytest.importorskip("highdicom", reason="needs the 'clinical' extra")

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from xrayage import XRayAge
from xrayage.cli.main import main
from xrayage.outputs import read_dicom_sr
from xrayage.serve.node import Destination, NodeSettings, XRayAgeNode, instance_tag, result_uid

from .dicom_factory import to_bytes
from .onnx_factory import build_tiny_model
from .serve_support import SECRET_ID, SECRET_NAME, SlowXRayAge, chest_dataset, dicom_sink, free_port
from .shared import NEMA

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    return XRayAge.load(build_tiny_model(tmp_path_factory.mktemp("tiny")), threads=1)


@pytest.fixture
def sink() -> Iterator[tuple[int, list[Dataset]]]:
    with dicom_sink() as s:
        yield s


def run_node(estimator: XRayAge, sink_port: int, datasets: list[Dataset],
             send_sc: bool = False, settings: NodeSettings | None = None,
             drain: bool = True) -> tuple[XRayAgeNode, list[int]]:
    """Start a node, C-STORE the datasets to it, wait until they are processed."""
    node = XRayAgeNode(estimator, forward=Destination("127.0.0.1", sink_port, "SINK"),
                       send_sc=send_sc, settings=settings)
    node.start(port=0)
    try:
        return node, send_to(node.port, datasets, node if drain else None)
    finally:
        node.stop(drain=drain, timeout_s=30)


def send_to(port: int, datasets: list[Dataset], node: XRayAgeNode | None = None) -> list[int]:
    """C-STORE the datasets in one association; wait for the node to drain if given."""
    scu = AE("MODALITY")
    scu.add_requested_context(Verification)
    for ds in datasets:  # one context per SOP class and transfer syntax, as PACS do
        syntax = ds.file_meta.TransferSyntaxUID
        if not any(c.abstract_syntax == ds.SOPClassUID and c.transfer_syntax == [syntax]
                   for c in scu.requested_contexts):
            scu.add_requested_context(ds.SOPClassUID, [syntax])
    assoc = scu.associate("127.0.0.1", port, ae_title="XRAYAGE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    if node is not None:
        assert node.join(60)
    return statuses


def test_chest_radiograph_answered_with_sr_and_sc(estimator: XRayAge,
                                                  sink: tuple[int, list[Any]]) -> None:
    port, received = sink
    ds = chest_dataset()
    node, statuses = run_node(estimator, port, [ds], send_sc=True)
    assert statuses == [0] and node.stats.forwarded == 1
    sr, sc = sorted(received, key=lambda d: d.Modality)[::-1]
    assert (sr.Modality, sc.Modality) == ("SR", "OT")
    for out in (sr, sc):
        assert out.StudyInstanceUID == ds.StudyInstanceUID
        assert out.SeriesInstanceUID != ds.SeriesInstanceUID
    expected = estimator.predict(to_bytes(chest_dataset())).xray_age
    assert read_dicom_sr(sr).xray_age == pytest.approx(expected, abs=0.01)
    assert read_dicom_sr(sr).source_sop_instance_uid == ds.SOPInstanceUID


def test_rejected_and_unreadable_are_acknowledged_not_answered(
        estimator: XRayAge, sink: tuple[int, list[Any]]) -> None:
    port, received = sink
    hand = chest_dataset(BodyPartExamined="HAND")
    lateral = chest_dataset(ViewPosition="LL")
    no_pixels = chest_dataset()
    del no_pixels.PixelData
    node, statuses = run_node(estimator, port, [hand, lateral, no_pixels, chest_dataset()])
    assert statuses == [0, 0, 0, 0]
    assert (node.stats.rejected, node.stats.unreadable, node.stats.forwarded) == (2, 1, 1)
    assert len(received) == 1 and received[0].Modality == "SR"


@pytest.mark.data
def test_nema_jpeg2000_chest_cr(estimator: XRayAge, sink: tuple[int, list[Any]]) -> None:
    port, received = sink
    nema = dcmread(NEMA)
    assert nema.file_meta.TransferSyntaxUID == JPEG2000
    node, statuses = run_node(estimator, port, [nema])
    assert statuses == [0] and node.stats.forwarded == 1
    values = read_dicom_sr(received[0])
    assert received[0].StudyInstanceUID == nema.StudyInstanceUID
    assert values.age_years == pytest.approx(64.5, abs=0.1)
    assert values.xray_age == pytest.approx(estimator.predict(NEMA).xray_age, abs=0.01)


def test_logs_hold_no_patient_identifiers(estimator: XRayAge, sink: tuple[int, list[Any]],
                                          caplog: pytest.LogCaptureFixture) -> None:
    port, _ = sink
    datasets = [chest_dataset(), chest_dataset(BodyPartExamined="HAND")]
    broken = chest_dataset()
    broken.PixelData = broken.PixelData[:100]
    with caplog.at_level(logging.DEBUG):  # pynetdicom and highdicom debug output included
        run_node(estimator, port, [*datasets, broken])
    text = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert instance_tag(datasets[1].SOPInstanceUID) in text
    for secret in (SECRET_NAME, SECRET_ID, "Zzyzx", "19650412", "ACC-SECRET"):
        assert secret not in text
    for ds in (*datasets, broken):  # pynetdicom's DEBUG lines print them: redacted
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert str(uid) not in text


def test_destination_parsing() -> None:
    assert Destination.parse("10.0.0.5:4242:ORTHANC") == Destination("10.0.0.5", 4242, "ORTHANC")
    assert Destination.parse("[::1]:104:PACS") == Destination("::1", 104, "PACS")
    for bad in ("host:104", "host:port:AET", "host:0:AET", "host:104:" + "A" * 17, ":104:A"):
        with pytest.raises(ValueError, match=r"HOST:PORT:AET|port must"):
            Destination.parse(bad)


def test_cli_refuses_bad_forward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_model(tmp_path / "m")
    code = main(["dicom-node", "--model", str(model), "--forward", "nowhere"])
    assert code == 2 and "HOST:PORT:AET" in capsys.readouterr().err


def test_uncompressed_transfer_syntax_round_trip(estimator: XRayAge,
                                                 sink: tuple[int, list[Any]]) -> None:
    port, received = sink
    ds = chest_dataset()
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"  # implicit VR
    _, statuses = run_node(estimator, port, [ds])
    assert statuses == [0] and len(received) == 1


def test_dead_letter_after_the_last_try(estimator: XRayAge, tmp_path: Path) -> None:
    settings = NodeSettings(spool_dir=tmp_path / "spool", send_attempts=3,
                            retry_initial_s=0.05, retry_max_s=0.1, network_timeout_s=2)
    node, statuses = run_node(estimator, free_port(), [chest_dataset()], settings=settings)
    assert statuses == [0] and node.stats.failed == 1 and node.stats.retried == 2
    dead = sorted((tmp_path / "spool" / "dead").iterdir())
    assert [p.suffix for p in dead] == [".dcm", ".json"]
    assert "after 3 tries" in dead[1].read_text()
    assert dcmread(dead[0]).SOPInstanceUID  # the instance itself, ready to retry
    assert not list((tmp_path / "spool" / "queue").iterdir())


def test_acknowledged_instance_survives_a_stop_and_is_answered_once(
        estimator: XRayAge, sink: tuple[int, list[Any]], tmp_path: Path) -> None:
    port, received = sink
    spool = tmp_path / "spool"
    ds = chest_dataset()
    # the destination is down: the acknowledged instance waits in the spool, retrying
    down = NodeSettings(spool_dir=spool, send_attempts=1000, retry_initial_s=0.2,
                        network_timeout_s=2)
    _, statuses = run_node(estimator, free_port(), [ds], settings=down, drain=False)
    assert statuses == [0] and len(list((spool / "queue").glob("*.dcm"))) == 1
    # the next start resumes it and sends it, with UIDs derived from the source's
    node = XRayAgeNode(estimator, forward=Destination("127.0.0.1", port, "SINK"),
                       settings=NodeSettings(spool_dir=spool))
    node.start(port=0)
    try:
        assert node.stats.resumed == 1 and node.join(30)
        assert len(received) == 1
        model = f"{estimator.card.name} {estimator.card.version}"
        assert received[0].SOPInstanceUID == result_uid(ds.SOPInstanceUID, model, "sr")
        assert send_to(node.port, [ds], node) == [0]  # the PACS sends it again
        assert node.stats.duplicate == 1 and len(received) == 1
    finally:
        node.stop()


def test_burst_is_slowed_not_refused(tiny_slow: XRayAge, sink: tuple[int, list[Any]],
                                     tmp_path: Path) -> None:
    port, received = sink
    settings = NodeSettings(spool_dir=tmp_path / "spool", max_spooled=2, store_wait_s=20)
    node, statuses = run_node(tiny_slow, port, [chest_dataset() for _ in range(8)],
                              settings=settings)
    assert statuses == [0] * 8 and node.stats.refused_busy == 0
    assert len(received) == 8 and len({r.SOPInstanceUID for r in received}) == 8


@pytest.fixture(scope="module")
def tiny_slow(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    slow = SlowXRayAge.load(build_tiny_model(tmp_path_factory.mktemp("slow")), threads=1)
    slow.delay_s = 0.2
    return slow
