"""``xrayage serve``: the HTTP API and web page (extra ``serve``)."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import click

logger = logging.getLogger("xrayage.serve")


def read_api_key(path: Path) -> str:
    """Read an API key from the first line of a file.

    Raises
    ------
    click.BadParameter
        The file is empty, or shorter than 16 characters.
    """
    key = path.read_text(encoding="utf-8").strip().splitlines()[0:1]
    if not key or len(key[0].strip()) < 16:
        raise click.BadParameter("the key file must hold a key of 16 characters or more",
                                 param_hint="--api-key-file")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; chmod 600 it", path)
    return key[0].strip()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--model", "model_name", default=None,
              help="Bundled model name or model directory (default: the bundled model).")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Require this key (header X-API-Key or Authorization: Bearer) on every "
                   "route but /healthz and the page.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Concurrent inference threads (ONNX threads are shared among them).")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests allowed to wait; more get 503 with Retry-After.")
@click.option("--max-upload-mb", default=64.0, show_default=True,
              type=click.FloatRange(0.001, 4096), help="Largest upload (413 beyond).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(0.1, 3600), help="Per-request limit in seconds (504).")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="ONNX Runtime threads per inference (default: cores / workers).")
@click.option("--body-timeout", "body_timeout_s", default=30.0, show_default=True,
              type=click.FloatRange(0.1, 3600),
              help="Seconds for the whole request body to arrive (408 beyond).")
@click.option("--min-upload-rate", "min_rate_kb", default=16.0, show_default=True,
              type=click.FloatRange(0, 1e6),
              help="Slowest mean upload rate, kB/s, checked after 5 s (408 below).")
@click.option("--uploads-per-client", default=4, show_default=True,
              type=click.IntRange(1, 10_000),
              help="Uploads one client address may send at once (429 beyond).")
@click.option("--max-uploads", default=32, show_default=True, type=click.IntRange(1, 100_000),
              help="Uploads received at once from all clients (503 beyond).")
@click.option("--memory-budget-mb", default=None, type=click.FloatRange(1, 1e6),
              help="Decode budget of one image, MiB (default 640: one image under 1 GB "
                   "peak); larger images get 413 (a JPEG decodes at reduced scale).")
@click.option("--fhir-patient-system", default=None, metavar="URI",
              help="system of the FHIR patient identifier (default urn:xrayage:patient-id).")
def serve(host: str, port: int, model_name: str | None, api_key_file: Path | None,
          workers: int, max_queue: int, max_upload_mb: float, timeout_s: float,
          threads: int | None, body_timeout_s: float = 30.0, min_rate_kb: float = 16.0,
          uploads_per_client: int = 4, max_uploads: int = 32,
          memory_budget_mb: float | None = None,
          fhir_patient_system: str | None = None) -> None:
    """Serve the X-ray age API (POST /v1/predict) and the web page at http://HOST:PORT/."""
    import uvicorn

    from ..memory import set_memory_budget
    from ..predict import XRayAge
    from ..serve.app import create_app
    from ..serve.limits import UploadLimits

    api_key = read_api_key(api_key_file) if api_key_file is not None else None
    if api_key is None and not _is_loopback(host):
        logger.warning("serving on %s without --api-key-file: anyone who reaches it can use it",
                       host)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    estimator = XRayAge.load(model_name, threads=threads)
    if memory_budget_mb is not None:
        set_memory_budget(int(memory_budget_mb * (1 << 20)))
    uploads = UploadLimits(body_timeout_s=body_timeout_s, min_rate_bytes_s=min_rate_kb * 1000,
                           per_client=uploads_per_client, max_uploads=max_uploads)
    app = create_app(estimator, api_key=api_key, max_upload_bytes=int(max_upload_mb * (1 << 20)),
                     timeout_s=timeout_s, max_queue=max_queue, workers=workers,
                     uploads=uploads, fhir_patient_system=fhir_patient_system)
    logging.getLogger("xrayage").setLevel(logging.INFO)
    click.echo(f"xrayage: serving {estimator.card.name} {estimator.card.version} on "
               f"http://{host}:{port}/ (Ctrl+C to stop)", err=True)
    # uvicorn's access log prints query strings (age, sex): ours logs the route only.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
