"""Small helpers shared by the cohort modules.

The ``analysis`` extra is imported with :func:`xrayage.extras.require` (naming
:data:`FEATURE`), and :class:`~xrayage.errors.CohortDataError` lives in
:mod:`xrayage.errors` (re-exported here and by :mod:`xrayage.cohort`).
"""

from __future__ import annotations

from typing import Any

from ..errors import CohortDataError as CohortDataError  # re-exported (it was defined here)
from ..extras import require

FEATURE = "xrayage analyze"
"""The feature named when a package of the ``analysis`` extra is missing."""


def new_axes(figsize: tuple[float, float] = (6.0, 4.5)) -> Any:
    """Return axes on a fresh Agg figure (no pyplot, so no global backend state is touched)."""
    figure = require("matplotlib.figure", "analysis", FEATURE)
    fig = figure.Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()
