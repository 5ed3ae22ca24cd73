"""Guards in front of the HTTP API: API key, upload size, content type, queue and timeout.

They run as one ASGI middleware, before FastAPI parses a body, so a refused request
costs no memory: an unauthenticated, oversize or queue-overflowing upload is
answered without reading it, and an upload that grows past the limit while it
streams is cut off with 413.
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


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` when a body grows past the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload larger than the limit of {limit:,} bytes")


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
    """

    def __init__(self, app: ASGIApp, *, pool: InferencePool, api_key: str | None,
                 max_upload_bytes: int, timeout_s: float, known_paths: frozenset[str]) -> None:
        self.app = app
        self.pool = pool
        self.api_key = api_key.encode() if api_key else None
        self.max_upload_bytes = max_upload_bytes
        self.timeout_s = timeout_s
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        status = {"code": 0, "bytes": 0}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_logged, status)
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
                         f"{self.max_upload_bytes:,} bytes")
            return
        ticket = self.pool.try_admit()
        if ticket is None:
            await _error(scope, receive, send, 503, "server busy: too many requests queued; "
                         "retry after the Retry-After delay",
                         {"Retry-After": str(self.pool.retry_after_s())})
            return
        scope.setdefault("state", {})["xrayage_ticket"] = ticket
        started = False

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                status["bytes"] += len(message.get("body", b""))
                if status["bytes"] > self.max_upload_bytes:
                    raise UploadTooLarge(self.max_upload_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, counting_receive, tracking_send),
                                   self.timeout_s)
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


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _error(scope: Scope, receive: Receive, send: Send, code: int, detail: str,
                 headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=code, headers=headers)
    await response(scope, receive, send)
