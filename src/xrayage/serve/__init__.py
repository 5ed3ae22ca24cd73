"""The xrayage service: an HTTP API with a web page, and a DICOM node (extra ``serve``).

- :func:`xrayage.serve.app.create_app` builds the FastAPI application
  (``xrayage serve``);
- :class:`xrayage.serve.node.XRayAgeNode` is the DICOM C-STORE/C-ECHO node that
  forwards the X-ray age SR (``xrayage dicom-node``).

Neither holds logic of its own: both call :meth:`xrayage.XRayAge.predict_many`.
"""

from __future__ import annotations
