"""Optional dependencies: one way to import them and to say which extra installs them.

Each feature that needs a package outside the core dependencies imports it with
:func:`require`, naming the pip extra (``pyproject.toml``) that provides it:

=============  ==============================================================
extra          what needs it
=============  ==============================================================
``train``      training, export, ``import-torchscript`` (torch, timm, lightning)
``serve``      the HTTP service and the DICOM node (fastapi, pynetdicom)
``clinical``   DICOM SR, Secondary Capture and FHIR outputs (highdicom, fhir.resources)
``analysis``   ``xrayage analyze`` and evaluation plots (pandas, statsmodels,
               lifelines, matplotlib)
``cluster``    ``xrayage predict --engine ray`` (ray, pyarrow)
=============  ==============================================================

matplotlib is in ``train``, ``clinical`` and ``analysis``; a plot names the extra of the
feature that draws it (``analysis`` for evaluation and cohort plots).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

EXTRAS = ("train", "serve", "clinical", "analysis", "cluster")
"""The pip extras that :func:`require` may name."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise :class:`~xrayage.errors.MissingExtraError` naming `extra`.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"highdicom"`` or ``"lifelines.statistics"``.
    extra : str
        The pip extra that installs it (one of :data:`EXTRAS`).
    feature : str
        What needs it, as the user knows it (``"DICOM SR"``, ``"xrayage analyze"``).

    Returns
    -------
    types.ModuleType
        The imported module.

    Raises
    ------
    MissingExtraError
        The module (or one it imports) is not installed; an :class:`ImportError`, whose
        message says ``pip install 'xrayage[EXTRA]'``.
    ValueError
        `extra` is not one of :data:`EXTRAS` (a programming error).

    Examples
    --------
    >>> require("json", "analysis", "xrayage analyze").__name__
    'json'
    >>> try:
    ...     require("no_such_module", "analysis", "xrayage analyze")
    ... except MissingExtraError as exc:
    ...     print(str(exc).split(" (")[0])
    xrayage analyze needs the 'analysis' extra: pip install 'xrayage[analysis]'
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(feature, extra, exc) from exc


__all__ = ["EXTRAS", "require"]
