"""Helpers for the service tests: a live uvicorn server, a DICOM sink, slow estimators."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from xrayage.predict import XRayAge

from .dicom_factory import make_dataset

SECRET_NAME = "Zzyzx^Quentavious"
SECRET_ID = "PID-7731-SECRET"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chest_dataset(**attrs: Any) -> Dataset:
    """A synthetic chest DX with identifying patient fields (to check they never leak)."""
    defaults = {"PatientName": SECRET_NAME, "PatientID": SECRET_ID,
                "PatientBirthDate": "19650412", "AccessionNumber": "ACC-SECRET-1",
                "StudyID": "1", "ReferringPhysicianName": "", "StudyTime": "101010"}
    return make_dataset(**{**defaults, **attrs})


@contextlib.contextmanager
def live_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on loopback; yield its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


class SlowXRayAge(XRayAge):
    """An estimator that sleeps before each batch (to fill queues and hit timeouts)."""

    delay_s = 1.0

    def predict_many(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        time.sleep(self.delay_s)
        return super().predict_many(*args, **kwargs)


@contextlib.contextmanager
def dicom_sink(ae_title: str = "SINK") -> Iterator[tuple[int, list[Dataset]]]:
    """A C-STORE SCP on loopback that keeps what it receives; yield (port, datasets)."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()


def png_header_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's signature)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(
        b"IEND", b"")


def zip_bomb() -> bytes:
    """A small zip archive that inflates to 50 MB of zeros."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("chest.png", b"\x00" * 50_000_000)
    return buf.getvalue()


def gray_png(size: tuple[int, int] = (400, 360), seed: int = 0) -> bytes:
    """A random gray PNG radiograph stand-in."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()
