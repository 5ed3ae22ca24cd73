"""Small helpers shared by the cohort modules.

The ``analysis`` extra is imported with :func:`xrayage.extras.require` (naming
:data:`FEATURE`), and :class:`~xrayage.errors.CohortDataError` lives in
:mod:`xrayage.errors` (re-exported here and by :mod:`xrayage.cohort`).
"""

from __future__ import annotations

from ..errors import CohortDataError as CohortDataError  # re-exported (it was defined here)
from ..extras import require as require  # re-exported
from ..plots import new_axes as new_axes  # re-exported: the cohort plots draw on it

FEATURE = "xrayage analyze"
"""The feature named when a package of the ``analysis`` extra is missing."""
