"""The xrayage service: an HTTP API with a web page, and a DICOM node (extra ``serve``).

- :func:`xrayage.serve.app.create_app` builds the FastAPI application
  (``xrayage serve``);
- :class:`xrayage.serve.node.XRayAgeNode` is the DICOM C-STORE/C-ECHO node that
  forwards the X-ray age SR (``xrayage dicom-node``).

Neither holds logic of its own: both call :meth:`xrayage.XRayAge.predict_many`.

Importing this package without the ``serve`` extra raises
:class:`~xrayage.errors.MissingExtraError`, which names the extra to install.
"""

from __future__ import annotations

from ..extras import require as _require

for _module in ("fastapi", "pydantic", "pynetdicom"):
    _require(_module, "serve", "the xrayage service (xrayage serve, xrayage dicom-node)")
