"""The estimating half of the Orthanc plugin: a process in xrayage's own environment.

:mod:`xrayage.serve.orthanc_plugin` runs inside Orthanc's embedded Python (Debian's
system Python, without numpy or onnxruntime). It starts this module with the virtual
environment's interpreter (``python -m xrayage.serve.orthanc_worker``) and talks to it
over stdin/stdout in frames (a 4-byte big-endian length, then the bytes):

- request: one frame, a DICOM instance (Part 10);
- reply: one frame of JSON (:class:`~xrayage.serve.answer.Answer` without the objects:
  ``outcome``, ``tag``, ``reasons``, ``xray_age``, ``results``: how many frames follow),
  then one frame per result object (the SR, and with ``--sc`` the SC), Part 10 bytes.

The model is loaded once. Anything else the libraries print goes to stderr (Orthanc's
log), never into the protocol; no message names a patient.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Sequence

from .orthanc_plugin import read_frame, write_frame


def main(argv: Sequence[str] | None = None) -> int:
    """Serve estimate requests on stdin/stdout until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m xrayage.serve.orthanc_worker")
    parser.add_argument("--model", default=None, help="model name or directory")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--sc", action="store_true", help="also build the Secondary Capture")
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; whatever else is printed goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="xrayage worker %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)

    from pydicom import dcmwrite

    from ..predict import XRayAge
    from . import redact
    from .answer import answer_instance

    redact.install()
    estimator = XRayAge.load(args.model, threads=args.threads)
    write_frame(protocol, json.dumps({"ready": True, "model": f"{estimator.card.name} "
                                      f"{estimator.card.version}"}).encode())
    protocol.flush()
    while True:
        data = read_frame(requests)
        if data is None:
            return 0
        answer = answer_instance(estimator, data, send_sc=args.sc)
        blobs = []
        for ds in answer.datasets:
            buf = io.BytesIO()
            dcmwrite(buf, ds, enforce_file_format=True)
            blobs.append(buf.getvalue())
        write_frame(protocol, json.dumps({
            "outcome": answer.outcome, "tag": answer.tag, "reasons": answer.reasons,
            "xray_age": answer.xray_age, "results": len(blobs),
            "log": answer.log_line()}).encode())
        for blob in blobs:
            write_frame(protocol, blob)
        protocol.flush()


if __name__ == "__main__":
    sys.exit(main())
