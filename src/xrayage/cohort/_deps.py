"""Lazy imports of the ``analysis`` extra, errors and small shared helpers."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import MissingExtraError, XRayAgeError, XRayAgeWarning

FEATURE = "xrayage analyze"


class CohortDataError(XRayAgeError, ValueError):
    """A cohort table cannot be analysed as asked (missing column, bad values, too few events).

    The message names the column and says what to change.
    """


class CohortWarning(XRayAgeWarning):
    """A cohort analysis ran but a result needs care (small group, missing data, non-PH)."""


def require(module: str) -> ModuleType:
    """Import `module` or raise :class:`~xrayage.errors.MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(FEATURE, "analysis", exc) from exc


def new_axes(figsize: tuple[float, float] = (6.0, 4.5)) -> Any:
    """Return axes on a fresh Agg figure (no pyplot, so no global backend state is touched)."""
    figure = require("matplotlib.figure")
    fig = figure.Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()
