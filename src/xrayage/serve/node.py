"""A DICOM node: receive radiographs by C-STORE, send back the X-ray age as a DICOM SR.

A PACS (or a modality) routes chest radiographs to this node. The node is durable:

1. **Spool before success.** Each received instance is written to the spool folder
   (``queue/``: written to ``tmp/``, fsync'd, renamed atomically, folder fsync'd)
   *before* the C-STORE success response. An acknowledged image is on disk.
2. **Workers drain the spool**, oldest first: X-ray age, then the SR (and, with
   ``send_sc``, the Secondary Capture) C-STOREd to the forward destination, in the
   radiograph's own study.
3. **Retry, then dead letter.** A failed send is retried with exponential back-off;
   after the last attempt (or at once for a permanent refusal) the instance goes to
   ``dead/`` with a JSON file saying why. Move it back into ``queue/`` to retry it.
4. **Exactly once.** The SR's SOP Instance and Series UIDs are derived from the source
   SOP Instance UID and the model's identity, and every finished instance is recorded in
   the ``done/`` ledger: an instance received again (a PACS retrying after a restart)
   is acknowledged and not answered twice, and a result re-sent after a crash has the
   same UIDs, so the PACS stores it once.
5. **Stop and resume.** :meth:`XRayAgeNode.stop` stops accepting, lets the workers
   finish the image in hand (a back-off wait is cut short), and leaves the rest in the
   spool; the next start resumes it.
6. **Back-pressure, not refusal.** When ``max_spooled`` instances wait, a C-STORE waits
   (up to ``store_wait_s``) for room before answering, so a burst is slowed down;
   only after that wait does it get 0xA700 (out of resources), which senders retry.

Images the quality checks reject (not chest, lateral, child, ...) and objects that are not
readable images are acknowledged, logged and recorded as done, not answered. C-ECHO is
supported.

Logs name an instance only by a short hash of its SOP Instance UID: never a patient
name, identifier, date or any pixel value; :mod:`xrayage.serve.redact` also rewrites
pynetdicom's own DEBUG lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# without the 'serve' extra, importing xrayage.serve already raised MissingExtraError
from pydicom.uid import generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..pipeline import PredictInput
from ..predict import XRayAge
from . import redact

logger = logging.getLogger("xrayage.node")
redact.install()

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


@dataclass(frozen=True)
class NodeSettings:
    """Limits and durability settings of the node (the defaults are documented in
    ``docs/service.md``).

    Attributes
    ----------
    spool_dir : path or None
        The spool folder (``tmp/``, ``queue/``, ``done/``, ``dead/``). None uses a
        temporary folder removed at :meth:`XRayAgeNode.stop`: not durable, for tests
        and library use; ``xrayage dicom-node`` always has one.
    workers : int
        Threads that run the model and send results.
    max_spooled : int
        Instances waiting in ``queue/``; at this many a C-STORE waits for room.
    store_wait_s : float
        How long a C-STORE waits for room before 0xA700 (keep it below the sender's
        DIMSE timeout).
    max_associations : int
        Concurrent incoming associations; more are rejected (transient) at association.
    send_attempts : int
        Tries per result before it goes to ``dead/``.
    retry_initial_s, retry_max_s : float
        Back-off before the second try, doubling up to ``retry_max_s``.
    network_timeout_s : float
        ACSE, DIMSE and idle-network timeout of the associations (both directions).
    """

    spool_dir: Path | None = None
    workers: int = 1
    max_spooled: int = 1000
    store_wait_s: float = 30.0
    max_associations: int = 16
    send_attempts: int = 10
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    network_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_spooled < 1 or self.send_attempts < 1:
            raise ValueError("workers, max_spooled and send_attempts must be >= 1")
        if self.max_associations < 1 or self.retry_initial_s < 0 or self.store_wait_s < 0:
            raise ValueError("max_associations must be >= 1 and the delays >= 0")

    def backoff_s(self, attempt: int) -> float:
        """Wait before try ``attempt + 1`` (``attempt`` counts from 1).

        Examples
        --------
        >>> [NodeSettings().backoff_s(a) for a in (1, 2, 3, 7, 8)]
        [1.0, 2.0, 4.0, 60.0, 60.0]
        """
        return float(min(self.retry_max_s, self.retry_initial_s * 2 ** (attempt - 1)))


@dataclass
class NodeStats:
    """Counts since the node started (read them from any thread)."""

    received: int = 0
    duplicate: int = 0
    forwarded: int = 0
    computed: int = 0
    rejected: int = 0
    unreadable: int = 0
    failed: int = 0
    retried: int = 0
    refused_busy: int = 0
    resumed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, n: int = 1) -> None:
        """Increment one counter."""
        with self.lock:
            setattr(self, key, getattr(self, key) + n)

    def as_dict(self) -> dict[str, int]:
        """The counters (JSON-ready)."""
        with self.lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}


def instance_tag(sop_instance_uid: str | None) -> str:
    """A short, non-reversible label of an instance for logs (12 hex digits)."""
    return hashlib.sha256((sop_instance_uid or "").encode()).hexdigest()[:12]


def result_uid(source_uid: str, model: str, role: str) -> str:
    """The UID of a result, derived from its source UID, the model and its role.

    The same source and model always give the same UID, so a result sent twice (a
    retry after a crash) is one instance for the PACS.

    Examples
    --------
    >>> result_uid("1.2.3", "m 1", "sr") == result_uid("1.2.3", "m 1", "sr")
    True
    >>> result_uid("1.2.3", "m 1", "sr") == result_uid("1.2.3", "m 1", "sc")
    False
    """
    return str(generate_uid(entropy_srcs=["xrayage", source_uid, model, role]))


class _Spool:
    """The spool folder: atomic, fsync'd writes; a ledger of finished instances."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp, self.queue = root / "tmp", root / "queue"
        self.done, self.dead = root / "done", root / "dead"
        for folder in (self.tmp, self.queue, self.done, self.dead):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # half-written by a killed process: never acked
            stale.unlink(missing_ok=True)

    def pending(self) -> list[Path]:
        """Queued instance files, oldest first."""
        return sorted(self.queue.glob("*.dcm"))

    def add(self, key: str, data: bytes) -> Path:
        """Write one instance durably into ``queue/`` and return its path."""
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        _write_durably(tmp, data)
        final = self.queue / f"{time.time_ns():020d}-{key}.dcm"
        os.replace(tmp, final)
        _fsync_dir(self.queue)
        return final

    def is_done(self, key: str) -> bool:
        return (self.done / f"{key}.json").exists()

    def finish(self, path: Path, key: str, record: dict[str, Any]) -> None:
        """Record ``key`` in the ledger, then remove its queued file."""
        _write_durably(self.done / f"{key}.json", json.dumps(record).encode())
        _fsync_dir(self.done)
        path.unlink(missing_ok=True)
        _fsync_dir(self.queue)

    def bury(self, path: Path, reason: dict[str, Any]) -> Path:
        """Move a queued instance into ``dead/`` with its reason beside it."""
        target = self.dead / path.name
        _write_durably(target.with_suffix(".json"), json.dumps(reason, indent=1).encode())
        os.replace(path, target)
        _fsync_dir(self.dead)
        _fsync_dir(self.queue)
        return target


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ledger_key(sop_instance_uid: str, model: str) -> str:
    """The done-ledger key of a source instance and a model (32 hex digits, no UID in it).

    Examples
    --------
    >>> len(ledger_key("1.2.3", "m 1"))
    32
    """
    return hashlib.sha256(f"{sop_instance_uid}|{model}".encode()).hexdigest()[:32]


def model_label(card: Any) -> str:
    """The model's identity as the result UIDs and ledger keys use it: ``name version``."""
    return f"{card.name} {card.version}"


def result_datasets(est: Any, card: Any, *, send_sc: bool = False) -> list[Any]:
    """The SR (and with ``send_sc`` the SC) of an estimate, with UIDs from :func:`result_uid`.

    Every way into a PACS (this node, ``xrayage dicomweb``, the Orthanc plugin) answers an
    instance with these objects, so the same source and model give the same instances.
    """
    from ..outputs import to_dicom_sr, to_secondary_capture

    model = model_label(card)
    source_uid = (est.source.sop_instance_uid if est.source is not None else None) or ""
    objects: list[Any] = [to_dicom_sr(est, card)]
    if send_sc:
        objects.append(to_secondary_capture(est, card))
    for ds, role in zip(objects, ("sr", "sc"), strict=False):
        ds.SOPInstanceUID = result_uid(source_uid, model, role)
        series = est.source.series_instance_uid if est.source is not None else None
        ds.SeriesInstanceUID = result_uid(series or source_uid, model, f"{role}-series")
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return objects


class _UndeliverableError(Exception):
    """A send failed for good (a permanent refusal, or the last try)."""


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
    settings : NodeSettings, optional
        Spool folder, limits and retries (see :class:`NodeSettings`).
    max_queue : int, optional
        Shorthand for ``settings.max_spooled``.

    Examples
    --------
    >>> node = XRayAgeNode(XRayAge.load(), forward=Destination.parse("127.0.0.1:4242:ORTHANC"),
    ...                    settings=NodeSettings(spool_dir=Path("spool")))  # doctest: +SKIP
    >>> node.start(port=11112)  # doctest: +SKIP
    """

    def __init__(self, estimator: XRayAge, *, ae_title: str = "XRAYAGE",
                 forward: Destination | None = None, send_sc: bool = False,
                 settings: NodeSettings | None = None, max_queue: int | None = None) -> None:
        if not 1 <= len(ae_title) <= 16:
            raise ValueError(f"AE title {ae_title!r} must be 1-16 characters")
        settings = settings or NodeSettings()
        if max_queue is not None:
            settings = NodeSettings(**{**asdict(settings), "max_spooled": max_queue})
        self.settings = settings
        self.estimator = estimator
        self.ae_title = ae_title
        self.forward = forward
        self.send_sc = send_sc
        self.stats = NodeStats()
        from ..outputs import to_dicom_sr, to_secondary_capture  # fail early without the extra

        self._to_sr, self._to_sc = to_dicom_sr, to_secondary_capture
        import highdicom  # noqa: F401 - its loggers exist now, so redact can cover them

        redact.install()
        card = estimator.card
        self._model = f"{card.name} {card.version}"
        self._temporary = settings.spool_dir is None
        root = (Path(tempfile.mkdtemp(prefix="xrayage-spool-")) if settings.spool_dir is None
                else Path(settings.spool_dir))
        self.spool = _Spool(root)
        self._jobs: queue.Queue[Path | None] = queue.Queue()
        self._lock = threading.Lock()
        self._spooled = 0          # files in queue/ (received or resumed, not finished)
        self._busy: set[str] = set()  # keys a worker holds now
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._server: Any = None
        self._ae = AE(ae_title=ae_title)
        self._ae.maximum_associations = settings.max_associations
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(self._ae, name, settings.network_timeout_s)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self._ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification)

    # -- life cycle ------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 11112, block: bool = False) -> None:
        """Resume the spool, start the workers and listen; ``block=True`` serves until
        interrupted (then stops, leaving unfinished work spooled)."""
        self._stopping.clear()
        self._jobs = queue.Queue()
        pending = self.spool.pending()
        with self._lock:
            self._spooled = len(pending)
        for path in pending:
            self._jobs.put(path)
        if pending:
            self.stats.add("resumed", len(pending))
            logger.info("resuming %d spooled instance(s) from %s", len(pending),
                        self.spool.queue)
        self._workers = [threading.Thread(target=self._work, name=f"xrayage-node-{i}",
                                          daemon=True)
                         for i in range(self.settings.workers)]
        for worker in self._workers:
            worker.start()
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store),
                               (evt.EVT_C_ECHO, self._on_echo)]
        self._server = self._ae.start_server((host, port), block=False, evt_handlers=handlers)
        logger.info("DICOM node %s listening on %s:%d; forwarding to %s; spool %s",
                    self.ae_title, host, self.port, self.forward or "nowhere (log only)",
                    "temporary" if self._temporary else self.spool.root)
        if block:
            try:
                while self._server is not None:
                    time.sleep(0.5)
            finally:
                self.stop(drain=False)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    @property
    def spooled(self) -> int:
        """Instances received (or resumed) and not yet finished."""
        return self._spooled

    def stop(self, timeout_s: float = 30.0, *, drain: bool = True) -> None:
        """Stop accepting associations (open ones are aborted), then stop the workers.

        Parameters
        ----------
        timeout_s : float
            How long to wait for the workers.
        drain : bool
            True: finish every spooled image first (within ``timeout_s``). False (what
            SIGTERM does): finish only the images in hand; the rest stays spooled for
            the next start. A temporary spool is removed either way.
        """
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            for assoc in list(server.active_associations):
                assoc.abort()
        if drain:
            self.join(timeout_s)
        self._stopping.set()
        for _ in self._workers:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = []
        left = self._spooled
        if self._temporary:
            shutil.rmtree(self.spool.root, ignore_errors=True)
        elif left:
            logger.info("stopped with %d instance(s) spooled for the next start", left)

    def join(self, timeout_s: float = 30.0) -> bool:
        """Wait until every received image is finished; True if the spool drained."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._spooled == 0:
                return True
            time.sleep(0.05)
        return self._spooled == 0

    # -- receiving ---------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        self.stats.add("received")
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        key = ledger_key(uid, self._model)
        if uid and self.spool.is_done(key):
            self.stats.add("duplicate")
            logger.info("instance %s received again: already answered, acknowledged only",
                        instance_tag(uid))
            return STATUS_SUCCESS
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # a dataset pynetdicom cannot re-encode
            logger.warning("C-STORE from %s: dataset cannot be encoded; refused",
                           event.assoc.requestor.ae_title)
            self.stats.add("unreadable")
            return STATUS_CANNOT_UNDERSTAND
        if not self._wait_for_room():
            self.stats.add("refused_busy")
            logger.warning("spool full (%d instances) for %.0f s: C-STORE refused with 0xA700",
                           self.settings.max_spooled, self.settings.store_wait_s)
            return STATUS_OUT_OF_RESOURCES
        if not uid:
            key = hashlib.sha256(data).hexdigest()[:32]
        try:
            path = self.spool.add(key, data)
        except OSError as exc:  # disk full, permissions: the sender keeps the image
            with self._lock:
                self._spooled -= 1
            self.stats.add("refused_busy")
            logger.error("cannot spool an instance (%s): C-STORE refused with 0xA700",
                         exc.strerror or type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        self._jobs.put(path)
        return STATUS_SUCCESS

    def _wait_for_room(self) -> bool:
        """Reserve a spool place, waiting up to ``store_wait_s`` (back-pressure)."""
        deadline = time.monotonic() + self.settings.store_wait_s
        while True:
            with self._lock:
                if self._spooled < self.settings.max_spooled:
                    self._spooled += 1
                    return True
            if time.monotonic() >= deadline or self._stopping.is_set():
                return False
            time.sleep(0.05)

    # -- working -----------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            path = self._jobs.get()
            if path is None or self._stopping.is_set():
                return
            key = path.stem.partition("-")[2]
            with self._lock:
                if key in self._busy:  # the same instance spooled twice: after this one
                    self._jobs.put(path)
                    time.sleep(0.05)
                    continue
                self._busy.add(key)
            try:
                self._handle(path, key)
            finally:
                with self._lock:
                    self._busy.discard(key)

    def _handle(self, path: Path, key: str) -> None:
        if not path.exists():
            return
        left_spooled = True
        try:
            if self.spool.is_done(key):
                self.stats.add("duplicate")
                self.spool.finish(path, key, json.loads(
                    (self.spool.done / f"{key}.json").read_text()))
            else:
                outcome = self._process(path.read_bytes())
                if outcome is None:  # stopping during a back-off: stays spooled
                    return
                self.spool.finish(path, key, outcome)
            left_spooled = False
        except _UndeliverableError as exc:
            self.stats.add("failed")
            self.spool.bury(path, {"reason": str(exc), "destination": str(self.forward),
                                   "attempts": exc.args[1] if len(exc.args) > 1 else None,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            logger.warning("%s; moved to %s", exc.args[0], self.spool.dead)
            left_spooled = False
        except Exception as exc:  # never let one image stop the node
            self.stats.add("failed")
            with contextlib.suppress(OSError):
                self.spool.bury(path, {"reason": f"processing failed ({type(exc).__name__})"})
            logger.error("processing failed (%s); instance moved to %s", type(exc).__name__,
                         self.spool.dead)
            left_spooled = False
        finally:
            if not left_spooled:
                with self._lock:
                    self._spooled -= 1

    def _process(self, data: bytes) -> dict[str, Any] | None:
        """Estimate one instance and deliver its result; the ledger record, or None when
        the node is stopping before the result could be sent."""
        est = next(self.estimator.predict_many(
            [PredictInput(data, "instance")], heatmap=self.send_sc,
            keep_radiograph=self.send_sc))
        if est.failure is not None and est.source is None:
            self.stats.add("unreadable")
            logger.info("instance not readable as a radiograph, not answered: %s",
                        est.failure.kind)
            return {"outcome": "unreadable", "reason": str(est.failure.kind)}
        uid = est.source.sop_instance_uid if est.source is not None else None
        tag = instance_tag(uid)
        if est.xray_age is None:
            self.stats.add("rejected")
            reasons = ", ".join(est.qc_reasons) or (str(est.failure.kind) if est.failure
                                                    else "no estimate")
            logger.info("instance %s: %s by the quality checks (%s), not answered", tag,
                        est.qc_status, reasons)
            return {"outcome": "rejected", "reasons": list(est.qc_reasons)}
        outputs = self._outputs(est, uid or "")
        if self.forward is None:
            self.stats.add("computed")
            logger.info("instance %s: X-ray age computed (no --forward destination)", tag)
            return {"outcome": "computed"}
        if not self._deliver(outputs, tag):
            return None
        self.stats.add("forwarded")
        return {"outcome": "sent", "to": str(self.forward),
                "results": [str(ds.SOPInstanceUID) for ds in outputs]}

    def _outputs(self, est: Any, source_uid: str) -> list[Any]:
        return result_datasets(est, self.estimator.card, send_sc=self.send_sc)

    def _deliver(self, outputs: list[Any], tag: str) -> bool:
        """Send with retries; True when delivered, False when stopping mid-way."""
        attempts = self.settings.send_attempts
        for attempt in range(1, attempts + 1):
            problem, permanent = self._send(outputs)
            if problem is None:
                logger.info("instance %s: %d result object(s) sent to %s%s", tag, len(outputs),
                            self.forward, f" (try {attempt})" if attempt > 1 else "")
                return True
            if permanent or attempt == attempts:
                raise _UndeliverableError(f"instance {tag}: result not delivered to {self.forward}"
                                     f" after {attempt} tries: {problem}", attempt)
            wait = self.settings.backoff_s(attempt)
            self.stats.add("retried")
            logger.warning("instance %s: send to %s failed (%s); try %d of %d in %.1f s", tag,
                           self.forward, problem, attempt + 1, attempts, wait)
            if self._stopping.wait(wait):
                logger.info("instance %s: stopping; its result stays spooled", tag)
                return False
        return False  # pragma: no cover - the loop always returns or raises

    def _send(self, datasets: list[Any]) -> tuple[str | None, bool]:
        """One try: (None, _) when every object was stored, else (problem, permanent)."""
        assert self.forward is not None
        scu = AE(ae_title=self.ae_title)
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(scu, name, self.settings.network_timeout_s)
        for ds in datasets:
            scu.add_requested_context(ds.SOPClassUID, _SEND_SYNTAXES)
        try:
            assoc = scu.associate(self.forward.host, self.forward.port,
                                  ae_title=self.forward.ae_title)
        except OSError as exc:
            return f"cannot connect ({exc.strerror or type(exc).__name__})", False
        if not assoc.is_established:
            if assoc.is_rejected:
                return "association rejected", False
            return "no association (destination down or unreachable)", False
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if "Status" not in status:
                    return "no C-STORE response (connection lost or timed out)", False
                code = int(status.Status)
                if code == STATUS_SUCCESS or 0xB000 <= code <= 0xBFFF:  # success, warnings
                    continue
                # 0xA7xx (out of resources) is transient; 0xA9xx, 0xCxxx, 0x01xx refuse it
                permanent = not 0xA700 <= code <= 0xA7FF
                return f"C-STORE status 0x{code:04X}", permanent
            return None, False
        finally:
            if assoc.is_established:
                assoc.release()


__all__ = ["Destination", "NodeSettings", "NodeStats", "XRayAgeNode", "instance_tag",
           "ledger_key", "model_label", "result_datasets", "result_uid"]
