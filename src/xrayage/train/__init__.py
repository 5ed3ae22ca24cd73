"""Training, export and the training cache (the ``[train]`` extra: torch, timm, lightning).

Importing :mod:`xrayage.train` itself needs only numpy; the submodules ``model``,
``module``, ``data``, ``augment``, ``fit`` and ``export`` import torch.
"""

from __future__ import annotations

from ..errors import MissingExtraError


def require_torch(feature: str = "training") -> None:
    """Raise :class:`~xrayage.errors.MissingExtraError` if torch, timm or lightning is missing."""
    try:
        import lightning  # noqa: F401
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(feature, "train", exc) from exc
