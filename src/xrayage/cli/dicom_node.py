"""``xrayage dicom-node``: a DICOM C-STORE node that answers with X-ray age SRs."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click


@click.command("dicom-node")
@click.option("--ae-title", default="XRAYAGE", show_default=True, help="This node's AE title.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=11112, show_default=True, type=click.IntRange(0, 65535))
@click.option("--forward", "forward_to", metavar="HOST:PORT:AET",
              help="C-STORE the SR (and SC) here, e.g. the PACS that sent the image.")
@click.option("--sc", "send_sc", is_flag=True,
              help="Also send a Secondary Capture with the heat map and the result.")
@click.option("--model", "model_name", default=None,
              help="Bundled model name or model directory (default: the bundled model).")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="ONNX Runtime threads (default: all cores).")
@click.option("--spool", "spool_dir", default="xrayage-spool", show_default=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="Spool folder: received instances, the done ledger, dead letters.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Threads that run the model and send results.")
@click.option("--max-spooled", default=1000, show_default=True,
              type=click.IntRange(1, 10_000_000),
              help="Instances waiting; at this many a C-STORE waits for room.")
@click.option("--store-wait", "store_wait_s", default=30.0, show_default=True,
              type=click.FloatRange(0, 3600),
              help="Seconds a C-STORE waits for spool room before 0xA700.")
@click.option("--max-associations", default=16, show_default=True,
              type=click.IntRange(1, 1000), help="Concurrent incoming associations.")
@click.option("--send-attempts", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Tries per result before it goes to SPOOL/dead.")
@click.option("--retry-initial", "retry_initial_s", default=1.0, show_default=True,
              type=click.FloatRange(0, 3600), help="Seconds before the second try (doubling).")
@click.option("--retry-max", "retry_max_s", default=60.0, show_default=True,
              type=click.FloatRange(0, 86400), help="Longest wait between tries, seconds.")
@click.option("--timeout", "network_timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(1, 3600), help="ACSE/DIMSE/network timeout, seconds.")
@click.option("--stop-grace", "stop_grace_s", default=20.0, show_default=True,
              type=click.FloatRange(0, 3600),
              help="On SIGTERM, seconds to finish the images in hand.")
@click.option("--memory-budget-mb", default=None, type=click.FloatRange(1, 1e6),
              help="Decode budget of one image, MiB (default 640: one image under 1 GB).")
def dicom_node(ae_title: str, host: str, port: int, forward_to: str | None, send_sc: bool,
               model_name: str | None, threads: int | None, spool_dir: Path, workers: int,
               max_spooled: int, store_wait_s: float, max_associations: int,
               send_attempts: int, retry_initial_s: float, retry_max_s: float,
               network_timeout_s: float, stop_grace_s: float,
               memory_budget_mb: float | None = None) -> None:
    """Receive chest radiographs by C-STORE and send back the X-ray age as a DICOM SR.

    Each instance is written to the spool before it is acknowledged; results are sent
    with retries (then moved to SPOOL/dead with the reason); SIGTERM or Ctrl+C stops
    accepting, finishes the images in hand and leaves the rest for the next start.
    Rejected or unreadable images are acknowledged and logged (without patient
    identifiers), never answered. C-ECHO is supported.
    """
    from ..memory import set_memory_budget
    from ..predict import XRayAge
    from ..serve.node import Destination, NodeSettings, XRayAgeNode

    try:
        forward = Destination.parse(forward_to) if forward_to else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--forward") from None
    settings = NodeSettings(
        spool_dir=spool_dir, workers=workers, max_spooled=max_spooled,
        store_wait_s=store_wait_s, max_associations=max_associations,
        send_attempts=send_attempts, retry_initial_s=retry_initial_s,
        retry_max_s=retry_max_s, network_timeout_s=network_timeout_s)
    if memory_budget_mb is not None:
        set_memory_budget(int(memory_budget_mb * (1 << 20)))
    estimator = XRayAge.load(model_name, threads=threads)
    xlogger = logging.getLogger("xrayage")
    if xlogger.getEffectiveLevel() > logging.INFO:
        xlogger.setLevel(logging.INFO)
    node = XRayAgeNode(estimator, ae_title=ae_title, forward=forward, send_sc=send_sc,
                       settings=settings)
    stop = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start(host=host, port=port)
        click.echo(f"xrayage: DICOM node {ae_title} on {host}:{node.port} "
                   f"(spool {spool_dir})", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        node.stop(stop_grace_s, drain=False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stats = node.stats.as_dict()
    click.echo(f"xrayage: DICOM node stopped; {node.spooled} instance(s) left spooled; "
               + ", ".join(f"{k} {v}" for k, v in stats.items() if v), err=True)
