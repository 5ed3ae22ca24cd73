"""The standard plots of X-ray age against chronological age, on fresh Agg figures.

``xrayage evaluate --plots`` and ``xrayage analyze`` draw the same two pictures with these
functions. matplotlib is imported through :func:`xrayage.extras.require` (extra
``analysis``); no pyplot, so no global backend state is touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .extras import require

FEATURE = "plots"


def new_axes(figsize: tuple[float, float] = (6.0, 4.5)) -> Any:
    """Return axes on a fresh Agg figure (``ax.figure.savefig(path)`` writes it)."""
    figure = require("matplotlib.figure", "analysis", FEATURE)
    fig = figure.Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def plot_scatter(*, xray_age: Any, age_years: Any, ax: Any | None = None) -> Any:
    """Scatter of X-ray age against chronological age with the identity line."""
    ax = ax if ax is not None else new_axes((5.0, 5.0))
    pred, age = np.asarray(xray_age, float), np.asarray(age_years, float)
    ax.scatter(age, pred, s=10, alpha=0.5, edgecolors="none")
    lo = float(np.nanmin([age.min(), pred.min()]))
    hi = float(np.nanmax([age.max(), pred.max()]))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="identity")
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel("X-ray age (years)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper left")
    return ax


def plot_bland_altman(*, xray_age: Any, age_years: Any, ax: Any | None = None) -> Any:
    """Bland–Altman plot: difference against mean, bias and 95% limits of agreement."""
    ax = ax if ax is not None else new_axes()
    pred, age = np.asarray(xray_age, float), np.asarray(age_years, float)
    diff, mean = pred - age, (pred + age) / 2
    bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1))
    ax.scatter(mean, diff, s=10, alpha=0.5, edgecolors="none")
    ax.axhline(bias, color="black", lw=1, label=f"bias {bias:+.1f} y")
    ax.axhline(bias - 1.96 * sd, color="grey", ls="--", lw=1)
    ax.axhline(bias + 1.96 * sd, color="grey", ls="--", lw=1,
               label=f"limits of agreement ±{1.96 * sd:.1f} y")
    ax.set_xlabel("mean of X-ray and chronological age (years)")
    ax.set_ylabel("X-ray age − chronological age (years)")
    ax.legend(loc="upper right")
    return ax


__all__ = ["new_axes", "plot_bland_altman", "plot_scatter"]
