"""A one-page, self-contained HTML report per radiograph, for a clinician.

The page shows the radiograph and its heat map (embedded PNGs), the X-ray age and
its interval, the gap set against a reference distribution, the quality-check
notes and a summary of the model card. It needs no network and no extra package.

The reference distribution is the spread of ``X-ray age - chronological age``
expected from model error alone: a normal curve with mean 0 and standard deviation
``sigma = half-width / z``, where the half-width is that of this estimate's conformal
interval and ``z`` the normal quantile of its coverage (so 90% of the curve lies
within the interval's half-width). Without an interval, ``sigma`` comes from the
card's ``metrics['mae']`` (``sigma = MAE * sqrt(pi / 2)``). It describes the model's
error on its calibration data, not a population norm of healthy ageing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image

from ..card import ModelCard
from ..estimate import AgeEstimate
from ..explain import LEGEND, colour_bar, overlay
from ..preprocess import square
from ._common import DISCLAIMER, coverage, model_label, software_label

IMAGE_SIDE = 480
"""Side of each embedded image, in pixels."""


@dataclass(frozen=True)
class GapReference:
    """The reference distribution a gap is shown against: ``Normal(0, sigma)``.

    Attributes
    ----------
    sigma : float
        Standard deviation in years.
    source : str
        Where sigma comes from, in words.
    """

    sigma: float
    source: str

    def percentile(self, gap: float) -> float:
        """Share (0-100) of the reference distribution below `gap`."""
        return 100.0 * NormalDist(0.0, self.sigma).cdf(gap)


def gap_reference(estimate: AgeEstimate, card: ModelCard) -> GapReference | None:
    """Build the :class:`GapReference` of an estimate, or None if the card gives no spread.

    Examples
    --------
    >>> from xrayage.card import ConformalCalibration, PreprocessSpec
    >>> card = ModelCard("m", "1", "cnn", PreprocessSpec(),
    ...                  conformal=ConformalCalibration(coverage=0.9, quantile=8.0))
    >>> est = AgeEstimate("x", xray_age=60.0, age_interval_lower=52.0, age_interval_upper=68.0)
    >>> round(gap_reference(est, card).sigma, 2)
    4.86
    """
    lower, upper, cov = estimate.age_interval_lower, estimate.age_interval_upper, coverage(card)
    if lower is not None and upper is not None and cov is not None and 0 < cov < 1:
        half = (upper - lower) / 2.0
        z = NormalDist().inv_cdf((1.0 + cov) / 2.0)
        if half > 0:
            n = card.conformal.n if card.conformal is not None else 0
            return GapReference(
                half / z,
                f"split-conformal calibration of the model card: {cov:.0%} of calibration "
                f"errors within \u00b1{half:.1f} y" + (f" (n = {n})" if n else ""))
    mae = card.metrics.get("mae")
    if isinstance(mae, int | float) and mae > 0:
        return GapReference(float(mae) * math.sqrt(math.pi / 2),
                            f"mean absolute error {mae:.1f} y in the model card's metrics")
    return None


def render_report(estimate: AgeEstimate, card: ModelCard) -> str:
    """Return the report of one estimate as a self-contained HTML page.

    Parameters
    ----------
    estimate : AgeEstimate
        Any estimate; rejected or unreadable inputs give a page that says why.
        Images appear if the radiograph was kept, the heat map if it was computed.
    card : ModelCard

    Returns
    -------
    str
        HTML5, no external resources.
    """
    esc = html.escape
    rg = estimate.radiograph
    images = ""
    if rg is not None:
        figures = [_figure(_gray(rg.pixels, card), "Radiograph (as the model sees it)")]
        if estimate.heatmap is not None:
            figures.append(_figure(
                overlay(rg.pixels, estimate.heatmap, card.preprocessing, max_side=IMAGE_SIDE),
                LEGEND, extra=_legend()))
        images = f'<div class="images">{"".join(figures)}</div>'
    return _PAGE.format(
        title=esc(f"X-ray age report: {Path(estimate.path).name}"),
        name=esc(Path(estimate.path).name),
        disclaimer=esc(DISCLAIMER),
        images=images,
        result=_result(estimate, card),
        gap=_gap_section(estimate, card),
        qc=_qc(estimate),
        card=_card(card),
        footer=esc(_footer(estimate)),
    )


def write_report(estimate: AgeEstimate, card: ModelCard, path: str | Path) -> Path:
    """Write :func:`render_report` to `path` (UTF-8) and return it."""
    path = Path(path)
    path.write_text(render_report(estimate, card), encoding="utf-8")
    return path


def _result(est: AgeEstimate, card: ModelCard) -> str:
    esc = html.escape
    if est.xray_age is None:
        why = est.error or f"quality check: {est.qc_status}"
        return f'<div class="big none">No X-ray age</div><p>{esc(why)}</p>'
    rows = []
    if est.age_interval_lower is not None and est.age_interval_upper is not None:
        cov = coverage(card)
        label = ("Interval" if cov is None else f"{cov:.0%} interval") + " for chronological age"
        rows.append((label, f"{est.age_interval_lower:.1f} \u2013 {est.age_interval_upper:.1f} y"))
    rows.append(("Chronological age", "unknown" if est.age_years is None
                 else f"{est.age_years:.1f} y"))
    if est.age_gap is not None:
        rows.append(("Age gap (X-ray \u2212 chronological)", f"{est.age_gap:+.1f} y"))
    if est.age_gap_corrected is not None:
        rows.append(("Gap corrected for age bias", f"{est.age_gap_corrected:+.1f} y"))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return (f'<div class="label">X-ray age</div><div class="big">{est.xray_age:.1f}'
            f'<span class="unit"> years</span></div><table class="kv">{table}</table>')


def _gap_section(est: AgeEstimate, card: ModelCard) -> str:
    gap = est.age_gap_corrected if est.age_gap_corrected is not None else est.age_gap
    if est.xray_age is None or gap is None:
        return "<p>No gap: the chronological age or the X-ray age is unknown.</p>"
    ref = gap_reference(est, card)
    if ref is None:
        return "<p>The model card gives no error spread to compare the gap with.</p>"
    which = "corrected gap" if est.age_gap_corrected is not None else "gap"
    pct = ref.percentile(gap)
    return (
        _gap_svg(gap, ref.sigma, coverage(card) or 0.9)
        + f"<p>The {which} of <b>{gap:+.1f} y</b> lies at the <b>{_ordinal(pct)} percentile</b> "
        f"of the gaps expected from model error alone. Curve: normal, mean 0, SD "
        f"{ref.sigma:.1f} y, from the {html.escape(ref.source)}. It is not a norm of healthy "
        "ageing: a gap inside the shaded band is within the model's usual error.</p>"
    )


def _gap_svg(gap: float, sigma: float, cov: float, width: int = 440, height: int = 150) -> str:
    """An inline SVG of the N(0, sigma) density, the central `cov` band and the gap."""
    span = max(4.0 * sigma, abs(gap) * 1.15)
    xs = np.linspace(-span, span, 161)
    ys = np.exp(-0.5 * (xs / sigma) ** 2)
    left, right, top, base = 20, width - 20, 12, height - 30

    def px(x: float) -> float:
        return left + (x + span) / (2 * span) * (right - left)

    def py(y: float) -> float:
        return base - y * (base - top)

    curve = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
    half = NormalDist().inv_cdf((1 + cov) / 2) * sigma
    band_x = [x for x in xs if -half <= x <= half]
    band = (f"{px(-half):.1f},{base} "
            + " ".join(f"{px(x):.1f},{py(math.exp(-0.5 * (x / sigma) ** 2)):.1f}"
                       for x in band_x) + f" {px(half):.1f},{base}")
    ticks = "".join(
        f'<line x1="{px(t):.1f}" y1="{base}" x2="{px(t):.1f}" y2="{base + 4}" stroke="#555"/>'
        f'<text x="{px(t):.1f}" y="{base + 16}" text-anchor="middle">{t:+.0f}</text>'
        for t in _ticks(span))
    gx = px(gap)
    return (
        f'<svg class="gap" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="gap against the reference">'
        f'<polygon points="{band}" fill="#cfe3f5"/>'
        f'<polyline points="{curve}" fill="none" stroke="#2a6fb0" stroke-width="2"/>'
        f'<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#555"/>{ticks}'
        f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{base}" stroke="#d9480f" '
        'stroke-width="3"/>'
        f'<text x="{gx:.1f}" y="{top + 2}" dx="4" fill="#d9480f">{gap:+.1f} y</text>'
        f'<text x="{right}" y="{height - 2}" text-anchor="end">gap, years</text></svg>'
    )


def _ordinal(pct: float) -> str:
    n = min(99, max(1, round(pct)))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ticks(span: float) -> list[float]:
    step = 5.0 if span <= 25 else 10.0
    n = int(span // step)
    return [k * step for k in range(-n, n + 1)]


def _qc(est: AgeEstimate) -> str:
    esc = html.escape
    items = ([est.error] if est.error else
             [f"{f.message} ({f.code})" for f in est.quality.findings])
    body = ("".join(f"<li>{esc(m)}</li>" for m in items) if items
            else "<li>No findings: header, pixels and content match what the model assumes.</li>")
    status = esc(est.qc_status.value)
    return f'<p>Status: <b class="qc-{status}">{status}</b></p><ul>{body}</ul>'


def _card(card: ModelCard) -> str:
    esc = html.escape
    spec = card.preprocessing
    rows = [("Model", model_label(card)), ("Architecture", card.architecture),
            ("Input", f"{spec.image_size} px, {spec.channels} channel(s), square by {spec.square}")]
    if card.training_data:
        rows.append(("Training data", " | ".join(
            training_summary(d) for d in card.training_data if isinstance(d, dict))))
    metrics = {k: v for k, v in card.metrics.items() if isinstance(v, int | float)}
    if metrics:
        rows.append(("Metrics", ", ".join(f"{k} {v:.3g}" for k, v in list(metrics.items())[:6])))
    if card.conformal is not None:
        c = card.conformal
        text = f"{c.coverage:.0%} split-conformal interval for chronological age (n = {c.n})"
        if c.empirical_coverage is not None:
            text += f", {c.empirical_coverage:.0%} measured"
        rows.append(("Interval", text))
    if card.bias_correction is not None:
        b = card.bias_correction
        rows.append(("Bias correction", f"corrected gap = X-ray age \u2212 ({b.slope:.3f} "
                                        f"\u00d7 age + {b.intercept:.2f}) (n = {b.n})"))
    rows.append(("Limits", " ".join(card.limits)))
    rows.append(("Licence", card.licence))
    return "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)


def _footer(est: AgeEstimate) -> str:
    parts = [f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by {software_label()}"]
    src = est.source
    if src is not None and src.study_instance_uid:
        parts.append(f"Study {src.study_instance_uid}")
    if src is not None and src.sop_instance_uid:
        parts.append(f"Image {src.sop_instance_uid}")
    return " \u00b7 ".join(parts)


def _gray(pixels: np.ndarray, card: ModelCard) -> Image.Image:
    base = square(np.asarray(pixels, dtype=np.float32), card.preprocessing.square)
    image = Image.fromarray(np.round(np.clip(base, 0, 1) * 255).astype(np.uint8), mode="L")
    return image.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)


DATASET_NAMES = {"nih_cxr14": "NIH ChestX-ray14", "chexpert": "CheXpert",
                 "padchest": "PadChest", "mimic_cxr": "MIMIC-CXR-JPG",
                 "covid_idc": "COVID-19 image data collection"}
"""Readable names of the datasets the adapters name by source."""


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(image: Image.Image, caption: str, extra: str = "") -> str:
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
            f'{_png(image)}">{extra}<figcaption>{html.escape(caption)}</figcaption></figure>')


def _legend() -> str:
    """The heat map's colour scale: a bar from dark (least) to bright (most)."""
    bar = _png(colour_bar(256, 1))
    return ('<div class="legend"><span>least</span>'
            f'<img class="scale" alt="colour scale" src="data:image/png;base64,{bar}">'
            "<span>most</span></div>")


def training_summary(entry: dict[str, Any]) -> str:
    """One dataset of the card's ``training_data`` in words: name, images, patients, ages,
    licence (each licence part once; no spec, path or dict).

    >>> training_summary({"name": "nih_cxr14", "images": 809, "patients": 538,
    ...                   "age_min": 18.0, "age_max": 85.0,
    ...                   "licence": "NIH: public; repo no licence file; repo Apache-2.0"})
    'NIH ChestX-ray14: 809 images, 538 patients, age 18-85 y; licence: NIH: public'
    """
    name = str(entry.get("name") or entry.get("adapter") or "unnamed dataset")
    name = DATASET_NAMES.get(name, name)
    facts = []
    for key, unit in (("images", "images"), ("patients", "patients")):
        if isinstance(entry.get(key), int):
            facts.append(f"{entry[key]:,} {unit}")
    lo, hi = entry.get("age_min"), entry.get("age_max")
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        facts.append(f"age {lo:.0f}-{hi:.0f} y")
    text = name + (f": {', '.join(facts)}" if facts else "")
    licence = str(entry.get("licence") or "")
    # a combined licence lists the dataset's terms, then where each file set came from
    # ("repo ..."): the dataset's own terms are what a reader needs
    parts = [p.strip() for p in licence.split(";") if p.strip()]
    terms = list(dict.fromkeys(p for p in parts if not p.startswith("repo ")))
    if terms:
        text += f"; licence: {'; '.join(terms)}"
    return text


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 980px;
       padding: 16px; color: #1b1b1b; }}
header {{ display: flex; justify-content: space-between; align-items: baseline;
          border-bottom: 2px solid #1b1b1b; }}
h1 {{ font-size: 22px; margin: 4px 0; }} h2 {{ font-size: 16px; margin: 14px 0 6px; }}
.banner {{ background: #fff3bf; border: 1px solid #f08c00; padding: 6px 10px; margin: 10px 0;
           font-weight: 600; }}
.images {{ display: flex; gap: 12px; }} figure {{ margin: 0; flex: 1 1 0; min-width: 0; }}
img {{ width: 100%; max-width: {side}px; display: block; }}
figcaption {{ font-size: 12px; color: #555; }}
.legend {{ display: flex; align-items: center; gap: 6px; font-size: 12px; color: #555;
           margin-top: 4px; }}
.legend img.scale {{ width: 160px; height: 12px; image-rendering: auto; }}
.cols {{ display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }}
.label {{ color: #555; text-transform: uppercase; font-size: 12px; letter-spacing: .05em; }}
.big {{ font-size: 44px; font-weight: 700; }} .unit {{ font-size: 18px; font-weight: 400; }}
.none {{ color: #a61e4d; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 8px 2px 0;
       vertical-align: top; }}
th {{ font-weight: 600; white-space: nowrap; }} .card td, .card th {{ font-size: 12px; }}
svg.gap text {{ font-size: 11px; }}
.qc-ok {{ color: #2b8a3e; }} .qc-warn {{ color: #e67700; }}
.qc-reject, .qc-error {{ color: #c92a2a; }}
footer {{ margin-top: 12px; border-top: 1px solid #ccc; font-size: 11px; color: #666; }}
</style></head>
<body>
<header><h1>X-ray age report</h1><span>{name}</span></header>
<div class="banner">{disclaimer}</div>
{images}
<div class="cols">
<section><h2>Result</h2>{result}</section>
<section><h2>Gap against the reference</h2>{gap}</section>
</div>
<div class="cols">
<section><h2>Quality checks</h2>{qc}</section>
<section><h2>Model</h2><table class="card">{card}</table></section>
</div>
<footer>{footer}</footer>
</body></html>
""".replace("{side}", str(IMAGE_SIDE))
