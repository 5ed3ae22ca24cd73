"""Training, export and the training cache (the ``[train]`` extra: torch, timm, lightning).

Importing :mod:`xrayage.train` itself needs only numpy; the submodules ``model``,
``module``, ``data``, ``augment``, ``fit`` and ``export`` import torch.
"""

from __future__ import annotations

from ..extras import require


def require_torch(feature: str = "training") -> None:
    """Raise :class:`~xrayage.errors.MissingExtraError` if torch, timm or lightning is missing.

    Parameters
    ----------
    feature : str
        What needs them, as the user knows it (``"xrayage train"``).
    """
    for module in ("torch", "timm", "lightning"):
        require(module, "train", feature)
