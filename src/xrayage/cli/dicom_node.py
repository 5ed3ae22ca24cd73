"""``xrayage dicom-node``: a DICOM C-STORE node that answers with X-ray age SRs."""

from __future__ import annotations

import logging

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
def dicom_node(ae_title: str, host: str, port: int, forward_to: str | None, send_sc: bool,
               model_name: str | None, threads: int | None) -> None:
    """Receive chest radiographs by C-STORE and send back the X-ray age as a DICOM SR.

    Rejected or unreadable images are acknowledged and logged (without patient
    identifiers), never answered. C-ECHO is supported. Stop with Ctrl+C.
    """
    from ..predict import XRayAge
    from ..serve.node import Destination, XRayAgeNode

    try:
        forward = Destination.parse(forward_to) if forward_to else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--forward") from None
    estimator = XRayAge.load(model_name, threads=threads)
    logging.getLogger("xrayage").setLevel(logging.INFO)
    node = XRayAgeNode(estimator, ae_title=ae_title, forward=forward, send_sc=send_sc)
    try:
        node.start(host=host, port=port, block=True)
    except KeyboardInterrupt:
        click.echo("xrayage: DICOM node stopped", err=True)
