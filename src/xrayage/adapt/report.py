"""The before/after report of an adaptation, ``report.html`` (:mod:`xrayage.adapt`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)



def write_report(path: Path, summary: dict[str, Any], before: np.ndarray, after: np.ndarray,
                 age: np.ndarray) -> Path:
    """``report.html``: the before/after table, warnings and plots (embedded PNGs)."""
    figures: list[tuple[str, str]] = []
    try:
        from ..plots import plot_bland_altman, plot_scatter
        for title, pred in (("base model", before), ("adapted (out-of-fold)", after)):
            ax = plot_scatter(xray_age=pred, age_years=age)
            ax.set_title(title)
            figures.append((title, _png(ax.figure)))
        ax = plot_bland_altman(xray_age=after, age_years=age)
        ax.set_title("adapted (out-of-fold): Bland-Altman")
        figures.append(("Bland-Altman", _png(ax.figure)))
    except ImportError as exc:  # no matplotlib: the report without plots
        logger.warning("report without plots: %s", exc)
    b, a = summary["before"], summary["after"]

    def row(label: str, key: str, fmt: str = "{:.2f}") -> str:
        def cell(m: dict[str, Any]) -> str:
            v = m.get(key)
            text = "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
            if key in ("mae", "r"):
                lo, hi = m["ci95"][key]
                text += f" ({lo:.2f}–{hi:.2f})"
            return text
        return f"<tr><th>{label}</th><td>{cell(b)}</td><td>{cell(a)}</td></tr>"

    local = summary["local"]
    gain = summary["gain"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>xrayage adapt</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
        ".warn{color:#a40}</style></head><body>",
        f"<h1>Site adaptation of {html.escape(summary['base_model']['name'])} "
        f"{html.escape(summary['base_model']['version'])}</h1>",
        f"<p>{local['images']} images of {local['patients']} patients, ages "
        f"{local['age_min']:.0f}–{local['age_max']:.0f} ({local['images_read']} read; left "
        f"out: {html.escape(json.dumps(local['excluded']))}).</p>",
        f"<p>Recipe chosen: <b>{html.escape(summary['recipe']['label'])}</b> "
        f"({html.escape(summary['method'])}).</p>",
        *[f"<p class='warn'>⚠ {html.escape(w)}</p>" for w in summary["warnings"]],
        "<h2>Before and after (nested, patient-disjoint, out-of-fold)</h2>",
        "<table><tr><th></th><th>base model</th><th>adapted</th></tr>",
        row("MAE, y (95% CI)", "mae"), row("bias, y", "bias", "{:+.2f}"),
        row("slope on age", "slope"), row("Pearson r (95% CI)", "r"),
        row("interval coverage", "interval_coverage", "{:.3f}"),
        row("interval mean width, y", "interval_mean_width"), "</table>",
        f"<p>MAE gain {gain['mae_gain']:+.2f} y (95% patient-bootstrap CI "
        f"{gain['ci95'][0]:+.2f} to {gain['ci95'][1]:+.2f}).</p>",
        *[f"<h3>{html.escape(t)}</h3><img alt='{html.escape(t)}' "
          f"src='data:image/png;base64,{png}'>" for t, png in figures],
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _png(figure: Any) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")

__all__ = ["write_report"]
