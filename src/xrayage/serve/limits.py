"""Guards in front of the HTTP API: API key, upload size, content type, slow clients,
queue and timeout.

They run as one ASGI middleware, before FastAPI parses a body, so a refused request
costs no memory: an unauthenticated or oversize upload is answered without reading
it, and an upload that grows past the limit while it streams is cut off with 413.

Slow clients cannot hold the service: a body is read by the middleware *before* the
request takes an inference slot, under a deadline and a minimum transfer rate (408 when
missed), with a limit of concurrent uploads per client address (429) and in all (503).
Every refusal is JSON ``{"detail": ..., "code": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile
from typing import TypeVar

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("xrayage.serve")

T = TypeVar("T")

PUBLIC_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
"""Paths served without the API key: the health check and the static web page (no data)."""

PUBLIC_PREFIXES = ("/static/",)

UPLOAD_PATHS = frozenset({"/v1/predict"})
"""POST paths that take an upload and an inference slot."""


class Ticket:
    """One admitted inference request; :meth:`release` frees its slot (idempotent)."""

    def __init__(self, pool: InferencePool) -> None:
        self._pool = pool
        self._released = False
        self.handed_off = False

    def release(self) -> None:
        """Free the slot (the first call only)."""
        with self._pool._lock:
            if not self._released:
                self._released = True
                self._pool._active -= 1


class InferencePool:
    """A bounded thread pool with admission control.

    At most ``workers`` jobs run at once and at most ``max_queue`` more wait; a
    request beyond that is refused up front (503) instead of growing memory. A job
    keeps its slot until its thread finishes, even if its request timed out, so
    abandoned work can never pile up behind the limit.

    Parameters
    ----------
    workers : int
        Concurrent inference threads.
    max_queue : int
        Admitted requests allowed to wait for a thread.
    """

    def __init__(self, workers: int = 1, max_queue: int = 8) -> None:
        if workers < 1 or max_queue < 0:
            raise ValueError("workers must be >= 1 and max_queue >= 0")
        self.workers = workers
        self.capacity = workers + max_queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="xrayage-infer")
        self._lock = threading.Lock()
        self._active = 0
        self._mean_s = 1.0

    @property
    def active(self) -> int:
        """Admitted requests not yet finished (running or waiting)."""
        return self._active

    def try_admit(self) -> Ticket | None:
        """Return a :class:`Ticket`, or None when the pool and its queue are full."""
        with self._lock:
            if self._active >= self.capacity:
                return None
            self._active += 1
        return Ticket(self)

    def retry_after_s(self) -> int:
        """Seconds after which a refused client may try again (1 to 60)."""
        waves = math.ceil(max(self._active, 1) / self.workers)
        return int(min(60, max(1, math.ceil(waves * self._mean_s))))

    async def run(self, ticket: Ticket, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread; the ticket is released when the thread ends."""
        ticket.handed_off = True
        future: Future[T] = self._executor.submit(self._timed, fn)
        future.add_done_callback(lambda _: ticket.release())
        return await asyncio.wrap_future(future)

    def _timed(self, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - start)

    def shutdown(self) -> None:
        """Stop the worker threads (waiting jobs are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


ERROR_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 404: "not_found",
    405: "method_not_allowed", 408: "upload_too_slow", 413: "too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_uploads",
    500: "internal_error", 501: "missing_extra", 503: "busy", 504: "timeout",
}
"""The default stable ``code`` of each HTTP status (more specific codes are listed in
``docs/service.md``); any other status gets ``http_<status>``."""


def error_code(status: int) -> str:
    """The stable default error code of an HTTP status."""
    return ERROR_CODES.get(status, f"http_{status}")


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` when a body grows past the limit (FastAPI re-raises it)."""

    code = "upload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload larger than the limit of {limit:,} bytes")


@dataclass(frozen=True)
class UploadLimits:
    """How a request body must arrive (slow-client protection).

    Attributes
    ----------
    body_timeout_s : float
        The whole body must arrive within this many seconds of the request.
    min_rate_bytes_s : float
        After ``grace_s``, the mean transfer rate must stay at or above this.
    grace_s : float
        Seconds before the rate is checked (a slow start is allowed).
    per_client : int
        Uploads one client address may have in flight at once; more get 429.
    max_uploads : int
        Uploads being received at once, from all clients; more get 503.
    spool_bytes : int
        A body is held in memory up to this size, then in a temporary file.
    """

    body_timeout_s: float = 30.0
    min_rate_bytes_s: float = 16_384.0
    grace_s: float = 5.0
    per_client: int = 4
    max_uploads: int = 32
    spool_bytes: int = 1 << 20


class _SlowUploadError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class GuardMiddleware:
    """ASGI middleware applying the service limits (see the module docstring).

    Parameters
    ----------
    app : ASGI app
    pool : InferencePool
    api_key : str or None
        When set, every path but the public ones needs header ``X-API-Key: KEY`` or
        ``Authorization: Bearer KEY``.
    max_upload_bytes : int
        Largest request body accepted on upload paths.
    timeout_s : float
        Whole-request deadline on upload paths (upload, queue and inference): 504.
    known_paths : set of str
        Paths logged as they are; any other path is logged as ``<other>``.
    uploads : UploadLimits, optional
        Body deadline, minimum rate and concurrent-upload limits.
    """

    def __init__(self, app: ASGIApp, *, pool: InferencePool, api_key: str | None,
                 max_upload_bytes: int, timeout_s: float, known_paths: frozenset[str],
                 uploads: UploadLimits | None = None) -> None:
        self.app = app
        self.pool = pool
        self.api_key = api_key.encode() if api_key else None
        self.max_upload_bytes = max_upload_bytes
        self.timeout_s = timeout_s
        self.known_paths = known_paths
        self.uploads = uploads or UploadLimits()
        self._per_client: dict[str, int] = {}
        self._receiving = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        status = {"code": 0, "bytes": 0}
        started = False

        async def send_logged(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                started = True
            await send(message)

        try:
            await self._handle(scope, receive, send_logged, status)
        except Exception as exc:  # never a plain-text 500: JSON with a code
            logger.error("internal error (%s) on %s", type(exc).__name__,
                         path if path in self.known_paths else "<other>")
            if not started:
                await _error(scope, receive, send_logged, 500, "internal error: the server "
                             "failed on this request; it was logged without its content",
                             code="internal_error")
        finally:
            logger.info("%s %s %d %.0f ms %d B", scope["method"],
                        path if path in self.known_paths or path.startswith("/static/")
                        else "<other>",
                        status["code"], 1000 * (time.perf_counter() - start), status["bytes"])

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      status: dict[str, int]) -> None:
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.api_key is not None and not _public(path) and not self._authorized(headers):
            await _error(scope, receive, send, 401, "missing or wrong API key: send header "
                         "'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                         {"WWW-Authenticate": "Bearer"})
            return
        if not (path in UPLOAD_PATHS and scope["method"] == "POST"):
            await self.app(scope, receive, send)
            return
        content_type = headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            given = content_type.split(";")[0] or "no content type"
            await _error(scope, receive, send, 415, "send the image as multipart/form-data "
                         f"with field 'file', not {given}")
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes:
            await _error(scope, receive, send, 413,
                         f"upload of {int(declared):,} bytes exceeds the limit of "
                         f"{self.max_upload_bytes:,} bytes", code="upload_too_large")
            return
        start = time.monotonic()
        client = str((scope.get("client") or ("?",))[0])
        limits = self.uploads
        if self._per_client.get(client, 0) >= limits.per_client:
            await _error(scope, receive, send, 429, f"this address already has "
                         f"{limits.per_client} uploads in flight; wait for one to finish",
                         {"Retry-After": "1"})
            return
        if self._receiving >= limits.max_uploads:
            await _error(scope, receive, send, 503, "server busy: too many uploads in "
                         "flight; retry after the Retry-After delay", {"Retry-After": "1"},
                         code="busy_uploads")
            return
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._receiving += 1
        try:
            body = await self._read_body(receive, status, start)
        except _SlowUploadError as exc:
            await _error(scope, receive, send, 408, exc.detail, {"Connection": "close"},
                         code="upload_too_slow")
            return
        except UploadTooLarge as exc:
            await _error(scope, receive, send, 413, str(exc.detail), code=exc.code)
            return
        finally:
            self._receiving -= 1
            left = self._per_client.pop(client, 1) - 1
            if left > 0:
                self._per_client[client] = left
        try:
            await self._run(scope, receive, send, body, start)
        finally:
            body.close()

    async def _read_body(self, receive: Receive, status: dict[str, int],
                         start: float) -> SpooledTemporaryFile[bytes]:
        """The whole body, under the deadline, the minimum rate and the size limit."""
        limits = self.uploads
        body: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(  # noqa: SIM115
            limits.spool_bytes)  # closed by the caller
        deadline = start + limits.body_timeout_s
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise _SlowUploadError(
                        f"upload not received within {limits.body_timeout_s:g} s")
                elapsed = now - start
                if (elapsed > limits.grace_s
                        and status["bytes"] < limits.min_rate_bytes_s * elapsed):
                    raise _SlowUploadError(f"upload slower than {limits.min_rate_bytes_s:,.0f} "
                                      "bytes/s")
                try:
                    message = await asyncio.wait_for(receive(), min(0.5, deadline - now))
                except asyncio.TimeoutError:
                    continue
                if message["type"] == "http.disconnect":
                    raise _SlowUploadError("client disconnected during the upload")
                chunk = message.get("body", b"")
                status["bytes"] += len(chunk)
                if status["bytes"] > self.max_upload_bytes:
                    raise UploadTooLarge(self.max_upload_bytes)
                body.write(chunk)
                if not message.get("more_body", False):
                    body.seek(0)
                    return body
        except BaseException:
            body.close()
            raise

    async def _run(self, scope: Scope, receive: Receive, send: Send,
                   body: SpooledTemporaryFile[bytes], start: float) -> None:
        """Admit the request to the inference pool and run the app on the read body."""
        ticket = self.pool.try_admit()
        if ticket is None:
            await _error(scope, receive, send, 503, "server busy: too many requests queued; "
                         "retry after the Retry-After delay",
                         {"Retry-After": str(self.pool.retry_after_s())})
            return
        scope.setdefault("state", {})["xrayage_ticket"] = ticket
        started = False
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # only http.disconnect can follow
            chunk = body.read(1 << 20)
            more = bool(chunk) and body.tell() < _size(body)
            replayed = not more
            return {"type": "http.request", "body": chunk, "more_body": more}

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        remaining = max(0.001, self.timeout_s - (time.monotonic() - start))
        try:
            await asyncio.wait_for(self.app(scope, replay, tracking_send), remaining)
        except asyncio.TimeoutError:
            if not started:
                await _error(scope, receive, send, 504,
                             f"request took longer than the {self.timeout_s:g} s limit")
        finally:
            if not ticket.handed_off:
                ticket.release()

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        return given is not None and hmac.compare_digest(given.encode(), self.api_key or b"")


def _size(handle: SpooledTemporaryFile[bytes]) -> int:
    position = handle.tell()
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(position)
    return size


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _error(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                 headers: dict[str, str] | None = None, *, code: str | None = None) -> None:
    response = JSONResponse({"detail": detail, "code": code or error_code(status)},
                            status_code=status, headers=headers)
    await response(scope, receive, send)
