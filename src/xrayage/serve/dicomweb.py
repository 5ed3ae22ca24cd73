"""A DICOMweb worker: find chest radiographs by QIDO-RS, fetch them by WADO-RS, store the
X-ray age SR (and SC) back by STOW-RS into the same study.

One run (:meth:`DicomWebWorker.run_once`):

1. **Find.** QIDO-RS for studies with a ``CR`` or ``DX`` series (``ModalitiesInStudy``, one
   query per modality), optionally in a study-date range or dated since the last run;
   then their series of those modalities, then the series' instances.
2. **Skip what is done.** The state file holds a ledger keyed by
   :func:`~xrayage.serve.node.ledger_key` (a hash of the SOP Instance UID and the model:
   no UID is written): an instance answered, refused or given up on is never fetched again.
3. **Estimate** each new instance (WADO-RS, its stored transfer syntax) through the normal
   pipeline, quality and content checks included (:func:`~xrayage.serve.answer.answer_instance`).
4. **Store** the SR (and with ``send_sc`` the SC) by STOW-RS into the source's study. Their
   UIDs derive from the source instance and the model
   (:func:`~xrayage.serve.node.result_uid`), so a result sent again after a crash is the
   same instance for the archive.
5. **Record** the outcome in the state file (written atomically after every instance), so
   an interrupted run loses nothing and a second run sends nothing twice. A transient
   failure (network, HTTP 5xx) leaves the instance for the next run; after
   ``max_attempts`` runs it is recorded as ``failed`` and logged.

Logs name an instance only by :func:`~xrayage.serve.node.instance_tag`; credentials come
from a file (:func:`read_credentials`), never the command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..extras import require
from ..predict import XRayAge
from . import redact
from .answer import answer_instance
from .node import instance_tag, ledger_key, model_label

logger = logging.getLogger("xrayage.dicomweb")

STATE_VERSION = 1
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_MODALITY = "00080060"
_FAILED_SOPS = "FailedSOPSequence"


@dataclass(frozen=True)
class Credentials:
    """HTTP credentials for the DICOMweb server: ``basic`` (user, password) or ``bearer``.

    The repr never shows the secret.
    """

    scheme: str
    user: str = ""
    secret: str = field(default="", repr=False)

    def apply(self, session: Any) -> None:
        """Set the credentials on a ``requests.Session``."""
        if self.scheme == "basic":
            session.auth = (self.user, self.secret)
        else:
            session.headers["Authorization"] = f"Bearer {self.secret}"


def read_credentials(path: Path) -> Credentials:
    """Read credentials from a file readable by its owner only.

    The first non-empty line is ``basic USER:PASSWORD`` or ``bearer TOKEN``.

    Raises
    ------
    PermissionError
        The file is readable or writable by the group or others (``chmod 600`` it).
    ValueError
        The line is neither form.
    """
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is accessible to other users; chmod 600 it")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    scheme, _, value = (lines[0] if lines else "").partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return Credentials("bearer", secret=value)
    user, sep, password = value.partition(":")
    if scheme == "basic" and sep and user:
        return Credentials("basic", user, password)
    raise ValueError(f"{path}: expected a first line 'basic USER:PASSWORD' or 'bearer TOKEN'")


@dataclass(frozen=True)
class Query:
    """Which studies to look at.

    Attributes
    ----------
    modalities : tuple of str
        Series modalities to fetch (``ModalitiesInStudy`` at study level).
    date_from, date_to : datetime.date or None
        Study date range (inclusive); studies without a StudyDate match no range.
    since_last_run : bool
        Only studies dated from the day before the last completed run on (the ledger
        still skips what is done, so the overlap costs queries, not results).
    """

    modalities: tuple[str, ...] = ("CR", "DX")
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    since_last_run: bool = False

    def study_date(self, last_run: dt.date | None) -> str | None:
        """The QIDO-RS ``StudyDate`` filter, or None for no date condition.

        Examples
        --------
        >>> Query(date_from=dt.date(2024, 1, 2)).study_date(None)
        '20240102-'
        >>> Query(since_last_run=True).study_date(dt.date(2024, 3, 1))
        '20240229-'
        """
        start = self.date_from
        if self.since_last_run and last_run is not None:
            since = last_run - dt.timedelta(days=1)
            start = since if start is None else max(start, since)
        if start is None and self.date_to is None:
            return None
        fmt = "%Y%m%d"
        return (f"{start.strftime(fmt) if start else ''}-"
                f"{self.date_to.strftime(fmt) if self.date_to else ''}")


class State:
    """The resumable state: the done ledger and the date of the last completed run.

    Written atomically (temporary file, fsync, rename) after every change.
    """

    def __init__(self, path: Path, model: str) -> None:
        self.path, self.model = Path(path), model
        self.instances: dict[str, dict[str, Any]] = {}
        self.last_run: dt.date | None = None
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"{self.path}: unknown state version {data.get('version')!r}")
            self.instances = dict(data.get("instances", {}))
            last = data.get("last_run")
            self.last_run = dt.date.fromisoformat(last) if last else None

    def key(self, sop_instance_uid: str) -> str:
        """The ledger key of an instance for this state's model."""
        return ledger_key(sop_instance_uid, self.model)

    def is_done(self, key: str) -> bool:
        """True when the instance needs nothing more (answered, refused, or given up)."""
        return "outcome" in self.instances.get(key, {})

    def attempts(self, key: str) -> int:
        """Failed attempts so far."""
        return int(self.instances.get(key, {}).get("attempts", 0))

    def record(self, key: str, **entry: Any) -> None:
        """Set an instance's entry and save."""
        self.instances[key] = {**self.instances.get(key, {}), **entry}
        self.save()

    def save(self) -> None:
        """Write the state atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": STATE_VERSION, "model": self.model,
                "last_run": self.last_run.isoformat() if self.last_run else None,
                "instances": self.instances}
        fd, tmp = tempfile.mkstemp(prefix=".xrayage-state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@dataclass
class RunStats:
    """Counts of one run."""

    studies: int = 0
    instances: int = 0
    skipped: int = 0
    answered: int = 0
    rejected: int = 0
    unreadable: int = 0
    retry_later: int = 0
    failed: int = 0
    stored: int = 0

    def summary(self) -> str:
        """``key n`` pairs of the non-zero counts."""
        return ", ".join(f"{k} {v}" for k, v in vars(self).items() if v) or "nothing to do"


def make_client(url: str, credentials: Credentials | None = None, *,
                timeout_s: float = 60.0) -> Any:
    """A :class:`dicomweb_client.DICOMwebClient` for ``url`` (needs the ``serve`` extra)."""
    require("dicomweb_client", "serve", "xrayage dicomweb")
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session

    redact.install()  # the client's and urllib3's DEBUG lines name UIDs in URLs
    session = create_session()
    if credentials is not None:
        credentials.apply(session)
    return DICOMwebClient(url, session=session, timeout=timeout_s)


def _pages(search: Any, *args: Any, page: int = 500, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every QIDO-RS match, ``page`` at a time (``limit`` and ``offset``: some servers,
    Orthanc's plugin among them, ignore an offset without a limit)."""
    offset = 0
    while True:
        items = search(*args, limit=page, offset=offset, **kwargs)
        yield from items
        if len(items) < page:
            return
        offset += len(items)


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _is_transient(exc: BaseException) -> bool:
    """Network trouble or a server error: worth another try later."""
    import requests

    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status >= 500 or status in (408, 429)
    return isinstance(exc, requests.RequestException | OSError)


class DicomWebWorker:
    """Answer a DICOMweb archive's chest radiographs with X-ray age SRs.

    Parameters
    ----------
    client : dicomweb_client.DICOMwebClient
        From :func:`make_client`.
    estimator : XRayAge
    state_path : path
        The state file (created on the first run).
    send_sc : bool
        Also store the Secondary Capture.
    max_attempts : int
        Runs that may fail on an instance (network, server errors) before it is recorded
        as ``failed``; a permanent refusal (HTTP 4xx) fails it at once.
    stop : threading.Event, optional
        Set it to stop after the instance in hand.
    """

    def __init__(self, client: Any, estimator: XRayAge, state_path: Path, *,
                 send_sc: bool = False, max_attempts: int = 5,
                 stop: threading.Event | None = None) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client, self.estimator = client, estimator
        self.send_sc, self.max_attempts = send_sc, max_attempts
        self.stop = stop or threading.Event()
        self.state = State(state_path, model_label(estimator.card))

    # -- finding -------------------------------------------------------------------------

    def find(self, query: Query) -> Iterator[tuple[str, str, str]]:
        """(study, series, SOP instance) UIDs of the instances the query selects."""
        study_date = query.study_date(self.state.last_run)
        studies: dict[str, None] = {}
        for modality in query.modalities:
            filters = {"ModalitiesInStudy": modality}
            if study_date:
                filters["StudyDate"] = study_date
            for item in _pages(self.client.search_for_studies, search_filters=filters):
                uid = _value(item, _STUDY_UID)
                if uid:
                    studies.setdefault(uid)
        wanted = {m.upper() for m in query.modalities}
        for study in studies:
            for series_item in _pages(self.client.search_for_series, study):
                series = _value(series_item, _SERIES_UID)
                if not series or (_value(series_item, _MODALITY) or "").upper() not in wanted:
                    continue
                for item in _pages(self.client.search_for_instances, study, series):
                    sop = _value(item, _SOP_UID)
                    if sop:
                        yield study, series, sop

    # -- running -------------------------------------------------------------------------

    def run_once(self, query: Query) -> RunStats:
        """Answer every selected instance not yet done; the run's counts."""
        stats, started = RunStats(), dt.datetime.now(dt.timezone.utc).date()
        seen: set[str] = set()
        studies: set[str] = set()
        for study, series, sop in self.find(query):
            if self.stop.is_set():
                logger.info("stopping: the rest is left for the next run")
                stats.studies = len(studies)
                return stats
            key = self.state.key(sop)
            if key in seen:
                continue
            seen.add(key)
            studies.add(study)
            stats.instances += 1
            if self.state.is_done(key):
                stats.skipped += 1
                continue
            self._one(study, series, sop, key, stats)
        stats.studies = len(studies)
        if not self.stop.is_set():
            self.state.last_run = started
            self.state.save()
        return stats

    def watch(self, query: Query, interval_s: float) -> Iterator[RunStats]:
        """Run, wait ``interval_s``, run again, until :attr:`stop` is set.

        A query with no date condition looks at everything once, then at studies dated
        since the last run (``since_last_run``).
        """
        while not self.stop.is_set():
            try:
                yield self.run_once(query)
                if query.date_from is None and not query.since_last_run:
                    query = Query(query.modalities, None, query.date_to, True)
            except Exception as exc:  # the server is down: try again next time
                if not _is_transient(exc):
                    raise
                logger.warning("DICOMweb query failed (%s); retrying in %.0f s",
                               type(exc).__name__, interval_s)
            if self.stop.wait(interval_s):
                return

    def _one(self, study: str, series: str, sop: str, key: str, stats: RunStats) -> None:
        tag = instance_tag(sop)
        try:
            data = self._fetch(study, series, sop)
            answer = answer_instance(self.estimator, data, send_sc=self.send_sc,
                                     fallback_uid=sop)
            if answer.outcome != "answered":
                setattr(stats, answer.outcome, getattr(stats, answer.outcome) + 1)
                logger.info("%s, not answered", answer.log_line())
                self.state.record(key, outcome=answer.outcome, reasons=answer.reasons)
                return
            self._store(study, answer.datasets)
        except Exception as exc:
            if _is_unauthorized(exc):
                raise  # every instance would fail alike: stop the run, record nothing
            attempts = self.state.attempts(key) + 1
            transient = _is_transient(exc)
            if transient and attempts < self.max_attempts:
                stats.retry_later += 1
                logger.warning("instance %s: %s (try %d of %d); left for the next run", tag,
                               _describe(exc), attempts, self.max_attempts)
                self.state.record(key, attempts=attempts)
            else:
                stats.failed += 1
                logger.error("instance %s: %s after %d try(ies); recorded as failed", tag,
                             _describe(exc), attempts)
                self.state.record(key, attempts=attempts, outcome="failed",
                                  reasons=[_describe(exc)])
            return
        stats.answered += 1
        stats.stored += len(answer.datasets)
        logger.info("%s, stored by STOW-RS", answer.log_line())
        self.state.record(key, outcome="answered", attempts=self.state.attempts(key),
                          results=[str(ds.SOPInstanceUID) for ds in answer.datasets])

    def _fetch(self, study: str, series: str, sop: str) -> bytes:
        """The instance as a Part 10 file, in its stored transfer syntax."""
        from pydicom import dcmwrite

        ds = self.client.retrieve_instance(study, series, sop,
                                           media_types=(("application/dicom", "*"),))
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()

    def _store(self, study: str, datasets: list[Any]) -> None:
        response = self.client.store_instances(datasets, study_instance_uid=study)
        failed = getattr(response, _FAILED_SOPS, None) if response is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise _StoreRefusedError(f"STOW-RS refused {len(failed)} object(s) "
                                     f"(FailureReason {', '.join(reasons)})")


def _is_unauthorized(exc: BaseException) -> bool:
    import requests

    return (isinstance(exc, requests.HTTPError) and exc.response is not None
            and exc.response.status_code in (401, 403))


class _StoreRefusedError(Exception):
    """The archive answered STOW-RS but refused an object (permanent)."""


def _describe(exc: BaseException) -> str:
    """A short description of a failure, without any URL (it would hold UIDs)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, _StoreRefusedError):
        return str(exc)
    return type(exc).__name__


__all__ = ["Credentials", "DicomWebWorker", "Query", "RunStats", "State", "make_client",
           "read_credentials"]
