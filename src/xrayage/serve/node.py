"""A DICOM node: receive radiographs by C-STORE, send back the X-ray age as a DICOM SR.

A PACS (or a modality) routes chest radiographs to this node. Each one is acknowledged
at once (status 0x0000) and queued; a worker thread reads it, runs X-ray age and
C-STOREs the Structured Report (and, optionally, the Secondary Capture with the heat
map) to the forward destination, in the radiograph's own study. Images the quality
checks reject (not chest, lateral, child, ...) and objects that are not readable
images are acknowledged too, logged, and not answered. C-ECHO is supported.

Logs name an instance only by a short hash of its SOP Instance UID: never a patient
name, identifier, date or any pixel value.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

# without the 'serve' extra, importing xrayage.serve already raised MissingExtraError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..pipeline import PredictInput
from ..predict import XRayAge

logger = logging.getLogger("xrayage.node")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

_SEND_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit, implicit VR LE


@dataclass(frozen=True)
class Destination:
    """A DICOM application entity to C-STORE results to.

    Examples
    --------
    >>> Destination.parse("pacs.local:104:ORTHANC")
    Destination(host='pacs.local', port=104, ae_title='ORTHANC')
    """

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``HOST:PORT:AET``.

        Raises
        ------
        ValueError
            Not three fields, a port outside 1-65535, or an AE title that is empty or
            longer than 16 characters.
        """
        host, sep, rest = text.rpartition(":")
        host, sep2, port = host.rpartition(":")
        if not (sep and sep2 and host and port.isdigit()):
            raise ValueError(f"{text!r}: expected HOST:PORT:AET, e.g. 127.0.0.1:4242:ORTHANC")
        host, aet = host.strip("[]"), rest.strip()  # [::1] style IPv6 literals
        if not 1 <= int(port) <= 65535 or not 1 <= len(aet) <= 16:
            raise ValueError(f"{text!r}: port must be 1-65535 and the AE title 1-16 characters")
        return cls(host, int(port), aet)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class NodeStats:
    """Counts since the node started (read them from any thread)."""

    received: int = 0
    forwarded: int = 0
    rejected: int = 0
    unreadable: int = 0
    failed: int = 0
    refused_busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str) -> None:
        """Increment one counter."""
        with self.lock:
            setattr(self, key, getattr(self, key) + 1)


def instance_tag(sop_instance_uid: str | None) -> str:
    """A short, non-reversible label of an instance for logs (12 hex digits)."""
    return hashlib.sha256((sop_instance_uid or "").encode()).hexdigest()[:12]


class XRayAgeNode:
    """A C-STORE / C-ECHO SCP that answers chest radiographs with an X-ray age SR.

    Parameters
    ----------
    estimator : XRayAge
    ae_title : str
        This node's AE title.
    forward : Destination, optional
        Where SRs (and SCs) are C-STOREd; None computes and logs only.
    send_sc : bool
        Also send the Secondary Capture (heat map and result burned in).
    max_queue : int
        Received images waiting for the model; more are refused with 0xA700.

    Examples
    --------
    >>> node = XRayAgeNode(XRayAge.load(), forward=Destination.parse("127.0.0.1:4242:ORTHANC"))
    ... # doctest: +SKIP
    >>> node.start(port=11112)  # doctest: +SKIP
    """

    def __init__(self, estimator: XRayAge, *, ae_title: str = "XRAYAGE",
                 forward: Destination | None = None, send_sc: bool = False,
                 max_queue: int = 32) -> None:
        if not 1 <= len(ae_title) <= 16:
            raise ValueError(f"AE title {ae_title!r} must be 1-16 characters")
        self.estimator = estimator
        self.ae_title = ae_title
        self.forward = forward
        self.send_sc = send_sc
        self.stats = NodeStats()
        from ..outputs import to_dicom_sr, to_secondary_capture  # fail early without the extra

        self._to_sr, self._to_sc = to_dicom_sr, to_secondary_capture
        self._jobs: queue.Queue[bytes | None] = queue.Queue(max_queue)
        self._worker: threading.Thread | None = None
        self._server: Any = None
        self._ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self._ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification)

    def start(self, host: str = "127.0.0.1", port: int = 11112, block: bool = False) -> None:
        """Listen for associations; with ``block=True`` serve until interrupted."""
        self._worker = threading.Thread(target=self._work, name="xrayage-node", daemon=True)
        self._worker.start()
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store),
                               (evt.EVT_C_ECHO, self._on_echo)]
        logger.info("DICOM node %s listening on %s:%d; forwarding to %s", self.ae_title, host,
                    port, self.forward or "nowhere (log only)")
        if block:
            try:
                self._ae.start_server((host, port), block=True, evt_handlers=handlers)
            finally:
                self._stop_worker()
        else:
            self._server = self._ae.start_server((host, port), block=False,
                                                 evt_handlers=handlers)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting associations, finish the queued images, and stop."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop_worker(timeout_s)

    def join(self, timeout_s: float = 30.0) -> bool:
        """Wait until every received image is processed; True if the queue drained."""
        done = threading.Event()

        def wait() -> None:
            self._jobs.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout_s)

    def _stop_worker(self, timeout_s: float = 30.0) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join(timeout_s)
        self._worker = None

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        self.stats.add("received")
        try:
            data = event.encoded_dataset()
        except Exception:  # a dataset pynetdicom cannot re-encode
            logger.warning("C-STORE from %s: dataset cannot be encoded; refused",
                           event.assoc.requestor.ae_title)
            self.stats.add("unreadable")
            return STATUS_CANNOT_UNDERSTAND
        try:
            self._jobs.put_nowait(data)
        except queue.Full:
            self.stats.add("refused_busy")
            logger.warning("queue full (%d images): C-STORE refused with 0xA700",
                           self._jobs.maxsize)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def _work(self) -> None:
        while True:
            data = self._jobs.get()
            try:
                if data is None:
                    return
                self._process(data)
            except Exception:  # never let one image stop the node
                self.stats.add("failed")
                logger.exception("processing failed")
            finally:
                self._jobs.task_done()

    def _process(self, data: bytes) -> None:
        est = next(self.estimator.predict_many(
            [PredictInput(data, "instance")], heatmap=self.send_sc,
            keep_radiograph=self.send_sc))
        if est.failure is not None and est.source is None:
            self.stats.add("unreadable")
            logger.info("instance not readable as a radiograph, not answered: %s",
                        est.failure.message)
            return
        tag = instance_tag(est.source.sop_instance_uid if est.source is not None else None)
        if est.xray_age is None:
            self.stats.add("rejected")
            logger.info("instance %s: %s by the quality checks (%s), not answered", tag,
                        est.qc_status, ", ".join(est.qc_reasons))
            return
        outputs = self._outputs(est)
        if self.forward is None:
            logger.info("instance %s: X-ray age computed (no --forward destination)", tag)
            return
        statuses = self._send(outputs)
        ok = all(s == STATUS_SUCCESS for s in statuses)
        self.stats.add("forwarded" if ok else "failed")
        logger.log(logging.INFO if ok else logging.WARNING,
                   "instance %s: %d result object(s) sent to %s, status %s", tag, len(outputs),
                   self.forward, ", ".join(f"0x{s:04X}" for s in statuses))

    def _outputs(self, est: Any) -> list[Any]:
        card = self.estimator.card
        objects: list[Any] = [self._to_sr(est, card)]
        if self.send_sc:
            objects.append(self._to_sc(est, card))
        return objects

    def _send(self, datasets: list[Any]) -> list[int]:
        if self.forward is None:
            return []
        scu = AE(ae_title=self.ae_title)
        for ds in datasets:
            scu.add_requested_context(ds.SOPClassUID, _SEND_SYNTAXES)
        assoc = scu.associate(self.forward.host, self.forward.port,
                              ae_title=self.forward.ae_title)
        if not assoc.is_established:
            logger.warning("association with %s failed", self.forward)
            return [-1] * len(datasets)
        try:
            statuses = []
            for ds in datasets:
                status = assoc.send_c_store(ds)
                statuses.append(int(status.Status) if "Status" in status else -1)
            return statuses
        finally:
            assoc.release()


__all__ = ["Destination", "NodeStats", "XRayAgeNode", "instance_tag"]
