"""An Orthanc plugin (``orthanc-python``): answer each stored chest CR/DX with an X-ray age SR.

Orthanc loads this file as its ``PythonScript``. It runs in Orthanc's embedded Python
(Debian's system Python 3), which has neither numpy nor onnxruntime, so this module uses
the standard library only and does no estimating itself:

- A **worker thread** (never Orthanc's callback threads) follows Orthanc's change log
  (``/changes``) from the sequence number saved in its state file, so instances stored
  while Orthanc was down or busy are not lost. A ``NewInstance`` change only wakes it.
- For each new instance of a configured modality (``CR``, ``DX``) it reads the file
  through Orthanc's REST API and hands it to a **worker process**
  (:mod:`xrayage.serve.orthanc_worker`) started with xrayage's own interpreter
  (``XRayAge.Python``, e.g. the virtual environment's ``bin/python``). The process loads
  the model once and runs the normal pipeline, quality and content checks included.
- The SR (and with ``SecondaryCapture`` the SC) comes back and is stored into Orthanc
  (``POST /instances``), in the source's study. Its UIDs derive from the source instance
  and the model, so a result made twice (after a restart) is stored once.
- A refused instance gets **one warning line**: ``xrayage: instance <tag>: refused by the
  quality checks (lateral_view)``; ``<tag>`` is a short hash of its SOP Instance UID.
  No log line names a patient.

Configuration (in Orthanc's JSON)::

    "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
    "PythonScript": "/opt/xrayage/orthanc_plugin.py",  // this file (it is self-contained)
    "XRayAge": {
      "Python": "/opt/xrayage/.venv/bin/python",  // required
      "Model": null,                // bundled model, or a model directory
      "Threads": 2,                 // ONNX Runtime threads of the worker process
      "SecondaryCapture": false,
      "Modalities": ["CR", "DX"],
      "StateFile": null,            // default: StorageDirectory/xrayage-plugin.json
      "PollSeconds": 10,            // the change log is also read this often
      "TimeoutSeconds": 300,        // one estimate; then the worker is restarted
      "MaxAttempts": 2,             // worker failures per instance before it is skipped
      "Backfill": false             // first start: also answer what Orthanc already holds
    }

Without a state file (the first start) the plugin begins at the end of the change log: it
answers what arrives from then on. ``"Backfill": true`` starts from the beginning instead;
for a large archive prefer ``xrayage dicomweb`` for the backlog (its SRs have the same UIDs).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 31
STATE_VERSION = 1


# -- framing (shared with xrayage.serve.orthanc_worker) -----------------------------------


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame (4-byte big-endian length, then the bytes), or None at end of stream."""
    head = stream.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise EOFError("truncated frame header")
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("truncated frame")
    return data


def write_frame(stream: BinaryIO, data: bytes) -> None:
    """Write one frame (not flushed)."""
    if len(data) >= MAX_FRAME:
        raise ValueError("frame too large")
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)


def instance_tag(sop_instance_uid: str | None) -> str:
    """The node's short, non-reversible label of an instance (12 hex digits)."""
    return hashlib.sha256((sop_instance_uid or "").encode()).hexdigest()[:12]


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class PluginConfig:
    """The ``XRayAge`` section of Orthanc's configuration (see the module docstring)."""

    python: str
    state_file: Path
    model: str | None = None
    threads: int | None = None
    secondary_capture: bool = False
    modalities: tuple[str, ...] = ("CR", "DX")
    poll_s: float = 10.0
    timeout_s: float = 300.0
    max_attempts: int = 2
    backfill: bool = False

    @classmethod
    def from_orthanc(cls, config: dict[str, Any]) -> PluginConfig:
        """Read the ``XRayAge`` section of Orthanc's whole configuration.

        Raises
        ------
        ValueError
            No ``XRayAge.Python``, or it is not an executable file.
        """
        section = config.get("XRayAge") or {}
        python = section.get("Python")
        if not python or not os.access(python, os.X_OK):
            raise ValueError("XRayAge.Python must name xrayage's Python interpreter "
                             f"(an executable file), got {python!r}")
        storage = Path(config.get("StorageDirectory") or "OrthancStorage")
        threads = section.get("Threads")
        return cls(
            python=str(python),
            state_file=Path(section.get("StateFile") or storage / "xrayage-plugin.json"),
            model=section.get("Model"), threads=int(threads) if threads else None,
            secondary_capture=bool(section.get("SecondaryCapture", False)),
            modalities=tuple(str(m).upper() for m in section.get("Modalities", ["CR", "DX"])),
            poll_s=float(section.get("PollSeconds", 10.0)),
            timeout_s=float(section.get("TimeoutSeconds", 300.0)),
            max_attempts=max(1, int(section.get("MaxAttempts", 2))),
            backfill=bool(section.get("Backfill", False)))

    def worker_argv(self) -> list[str]:
        """The worker process's command line."""
        argv = [self.python, "-m", "xrayage.serve.orthanc_worker"]
        if self.model:
            argv += ["--model", str(self.model)]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if self.secondary_capture:
            argv.append("--sc")
        return argv


# -- the worker process ----------------------------------------------------------------


class WorkerError(Exception):
    """The worker process died, hung or broke the protocol."""


class WorkerProcess:
    """The xrayage process that estimates; restarted after a failure."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv, self.timeout_s = argv, timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.model = ""

    def _start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in ("PYTHONHOME", "PYTHONPATH"):  # the embedded Python's, not xrayage's
            env.pop(name, None)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, cwd="/")
        ready = json.loads(self._read_frame(max(self.timeout_s, 120.0)))
        self.model = str(ready.get("model", ""))

    def ensure_started(self) -> None:
        """Start the process (and load the model) unless it runs.

        Raises
        ------
        WorkerError
            It could not start.
        """
        try:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
        except (OSError, ValueError, EOFError, WorkerError) as exc:
            self.close()
            raise WorkerError(f"worker process failed to start ({type(exc).__name__}: "
                              f"{exc})") from exc

    def estimate(self, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        """Send one instance; its reply header and result objects.

        Raises
        ------
        WorkerError
            The process failed (it is stopped; the next call starts a new one).
        """
        try:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            assert self.proc is not None and self.proc.stdin is not None
            write_frame(self.proc.stdin, data)  # type: ignore[arg-type]
            self.proc.stdin.flush()
            header = json.loads(self._read_frame(self.timeout_s))
            blobs = [self._read_frame(self.timeout_s) for _ in range(int(header["results"]))]
            return header, blobs
        except (OSError, ValueError, KeyError, EOFError, WorkerError) as exc:
            self.close()
            raise WorkerError(f"worker process failed ({type(exc).__name__}: {exc})") from exc

    def _read_frame(self, timeout_s: float) -> bytes:
        head = self._read_exact(_HEADER.size, timeout_s)
        return self._read_exact(_HEADER.unpack(head)[0], timeout_s)

    def _read_exact(self, size: int, timeout_s: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd, chunks, left = self.proc.stdout.fileno(), [], size
        deadline = time.monotonic() + timeout_s
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise WorkerError(f"no reply within {timeout_s:.0f} s")
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError(f"worker exited (status {self.proc.poll()})")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Stop the process (closing its stdin ends it cleanly)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(10)


# -- the plugin ------------------------------------------------------------------------


class XRayAgePlugin:
    """Follow Orthanc's change log in a thread; answer new chest instances.

    Parameters
    ----------
    api : module
        The ``orthanc`` module (or a stand-in with ``RestApiGet``, ``RestApiPost``,
        ``LogInfo``, ``LogWarning``, ``LogError``).
    config : PluginConfig
    worker : WorkerProcess, optional
        Default: one started from ``config.worker_argv()``.
    """

    def __init__(self, api: Any, config: PluginConfig,
                 worker: WorkerProcess | None = None) -> None:
        self.api, self.config = api, config
        self.worker = worker or WorkerProcess(config.worker_argv(), config.timeout_s)
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None
        self.seq = 0
        self.counts = {"answered": 0, "rejected": 0, "unreadable": 0, "skipped": 0,
                       "failed": 0}

    # life cycle
    def start(self) -> None:
        """Start the worker thread (it reads the state file)."""
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run, name="xrayage-plugin", daemon=True)
        self.thread.start()

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop after the instance in hand, or cut it short after ``grace_s``; what is not
        finished is resumed from the change log at the next start."""
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(grace_s)
        self.worker.close()  # unblocks a thread still waiting for an estimate
        if self.thread is not None:
            self.thread.join(10.0)
        self.thread = None

    def on_change(self, change_type: Any, level: Any, resource: Any) -> None:
        """Orthanc's change callback: wake, start or stop the thread; no work here."""
        names = self.api.ChangeType
        if change_type == names.NEW_INSTANCE:
            self.wake.set()
        elif change_type == names.ORTHANC_STARTED:
            self.start()
        elif change_type == names.ORTHANC_STOPPED:
            self.stop()

    # the thread
    def _run(self) -> None:
        try:
            self.seq = self._load_seq()
        except Exception as exc:  # unreadable state file, or Orthanc's REST API failing
            self.api.LogError(f"xrayage: plugin stopped: cannot read its state "
                              f"({type(exc).__name__}: {exc})")
            return
        self._info(f"following Orthanc's changes from {self.seq}; worker "
                   f"{' '.join(self.config.worker_argv())}", warning=True)
        try:
            self.worker.ensure_started()  # load the model now, not at the first image
        except WorkerError as exc:
            self.api.LogError(f"xrayage: {exc}; retried at the first instance")
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                self.drain()
            except Exception as exc:  # Orthanc stopping, a REST error: try again later
                if not self.stopping.is_set():
                    self.api.LogError(f"xrayage: reading Orthanc's changes failed "
                                      f"({type(exc).__name__}); retrying")
            self.wake.wait(self.config.poll_s)

    def drain(self) -> int:
        """Handle every change after the saved sequence number; how many were handled."""
        handled = 0
        while not self.stopping.is_set():
            page = json.loads(self.api.RestApiGet(f"/changes?since={self.seq}&limit=100"))
            for change in page.get("Changes", []):
                if self.stopping.is_set():
                    return handled
                if change.get("ChangeType") == "NewInstance":
                    self.handle(str(change["ID"]))
                    handled += 1
                    if self.stopping.is_set():  # perhaps cut short: do it again next start
                        return handled
                self.seq = int(change["Seq"])
                self._save_seq()
            if page.get("Done", True) or not page.get("Changes"):
                return handled
        return handled

    def handle(self, instance_id: str) -> str:
        """Answer one Orthanc instance; its outcome."""
        try:
            info = json.loads(self.api.RestApiGet(f"/instances/{instance_id}"))
            series = json.loads(self.api.RestApiGet(f"/instances/{instance_id}/series"))
        except Exception:  # deleted meanwhile
            return self._count("skipped")
        tag = instance_tag(info.get("MainDicomTags", {}).get("SOPInstanceUID"))
        modality = str(series.get("MainDicomTags", {}).get("Modality", "")).upper()
        if modality not in self.config.modalities:
            self._info(f"instance {tag}: modality {modality or '?'} is not estimated")
            return self._count("skipped")
        try:
            data = self.api.RestApiGet(f"/instances/{instance_id}/file")
        except Exception:  # deleted meanwhile
            return self._count("skipped")
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                header, blobs = self.worker.estimate(data)
                break
            except WorkerError as exc:
                if self.stopping.is_set():
                    return "stopped"
                if attempt == self.config.max_attempts:
                    self.api.LogError(f"xrayage: instance {tag}: {exc}; not answered")
                    return self._count("failed")
                self.api.LogWarning(f"xrayage: instance {tag}: {exc}; retrying")
        outcome = str(header.get("outcome"))
        if outcome != "answered":
            self.api.LogWarning(f"xrayage: {header.get('log')}")
            return self._count(outcome if outcome in self.counts else "failed")
        try:
            for blob in blobs:
                self.api.RestApiPost("/instances", blob)
        except Exception as exc:  # Orthanc refused it (disk full, ...): log, move on
            self.api.LogError(f"xrayage: instance {tag}: storing its result failed "
                              f"({type(exc).__name__}); not answered")
            return self._count("failed")
        self._info(f"{header.get('log')}, stored")
        return self._count("answered")

    # helpers
    def _count(self, outcome: str) -> str:
        self.counts[outcome] += 1
        return outcome

    def _info(self, message: str, *, warning: bool = False) -> None:
        (self.api.LogWarning if warning else self.api.LogInfo)(f"xrayage: {message}")

    def _load_seq(self) -> int:
        """The saved sequence number; at the first start, the end of the change log (or 0
        with ``backfill``), saved at once."""
        try:
            data = json.loads(self.config.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            last = json.loads(self.api.RestApiGet("/changes?last")).get("Last", 0)
            self.seq = 0 if self.config.backfill else int(last)
            self._save_seq()
            return self.seq
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{self.config.state_file}: unknown state version")
        return int(data.get("seq", 0))

    def _save_seq(self) -> None:
        path = self.config.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"version": STATE_VERSION, "seq": self.seq}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def register(api: Any) -> XRayAgePlugin | None:
    """Read the configuration and register the change callback; None if misconfigured."""
    try:
        config = PluginConfig.from_orthanc(json.loads(api.GetConfiguration()))
    except ValueError as exc:
        api.LogError(f"xrayage: plugin disabled: {exc}")
        return None
    plugin = XRayAgePlugin(api, config)
    callback: Callable[[Any, Any, Any], None] = plugin.on_change
    api.RegisterOnChangeCallback(callback)
    return plugin


try:  # inside Orthanc only
    import orthanc
except ImportError:
    orthanc = None
if orthanc is not None:
    PLUGIN = register(orthanc)
