"""The site's labelled radiographs through the normal pipeline, with the model's features, and
the before/after scores (:mod:`xrayage.adapt`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration import empirical_coverage
from ..datasets import Sample, load_dataset
from ..estimate import AgeEstimate
from ..metrics import age_metrics, bootstrap_ci
from ..model import AgeModel
from ..pipeline import PredictInput, stream
from ..quality import QualityStatus

logger = logging.getLogger(__name__)



@dataclass
class SiteData:
    """What the pipeline gave for the site's images: ages, base-model ages, features."""

    age: np.ndarray
    base: np.ndarray
    features: np.ndarray | None
    patients: list[str]
    sex: list[str]
    view: list[str]
    excluded: dict[str, int]
    images_read: int
    seconds: float
    index: list[int] = field(default_factory=list)


def read_site(model: AgeModel, samples: Sequence[Sample], *, features: bool = True,
              batch_size: int = 8, read_workers: int = 2) -> SiteData:
    """Run the site's images through the pipeline once (the model's quality checks apply)
    and collect each estimated image's features and base age.

    Images refused by a check (children, laterals, rejects), unreadable ones and ones
    without a chronological age are left out and counted by reason.
    """
    start = time.perf_counter()
    items = [PredictInput(str(s.path), f"site-{i}", s.age_years, s.sex or None,
                          s.view or None) for i, s in enumerate(samples)]
    feats: dict[str, np.ndarray] = {}

    def keep(est: AgeEstimate, values: np.ndarray) -> None:
        feats[est.path] = np.asarray(values, np.float32)

    excluded: Counter[str] = Counter()
    rows: list[tuple[int, float, float]] = []
    for i, est in enumerate(stream(model, items, batch_size=batch_size,
                                   read_workers=read_workers,
                                   on_features=keep if features else None)):
        if est.xray_age is None:
            if est.failure is not None:
                excluded[f"failed:{est.failure.kind.value}"] += 1
            else:
                codes = [f.code for f in est.quality.findings
                         if f.status is QualityStatus.REJECT]
                excluded[",".join(codes) or "rejected"] += 1
        elif est.age_years is None or not math.isfinite(est.age_years):
            excluded["no_age"] += 1
        else:
            rows.append((i, float(est.age_years), float(est.xray_age)))
    idx = [r[0] for r in rows]
    x = (np.stack([feats[f"site-{i}"] for i in idx]) if features and idx else None)
    return SiteData(
        age=np.array([r[1] for r in rows]), base=np.array([r[2] for r in rows]),
        features=x, patients=[str(samples[i].patient_id) for i in idx],
        sex=[samples[i].sex or "" for i in idx], view=[samples[i].view or "" for i in idx],
        excluded=dict(excluded.most_common()), images_read=len(samples),
        seconds=time.perf_counter() - start, index=idx)


def load_site(manifest: str | os.PathLike[str]) -> list[Sample]:
    """The labelled images of a site: a manifest CSV path or a dataset spec."""
    spec = str(manifest)
    if ":" not in spec.split("?", 1)[0] and spec.lower().endswith(".csv"):
        spec = f"manifest:{spec}"
    return load_dataset(spec, role="eval").samples




def scored(pred: np.ndarray, age: np.ndarray, patients: Sequence[str],
           bounds: tuple[np.ndarray, np.ndarray] | None, seed: int = 0) -> dict[str, Any]:
    """MAE, bias, slope, r and interval coverage of predictions, with 95% patient-bootstrap
    CIs of MAE and r."""
    m = age_metrics(age_years=age, xray_age=pred)
    out = {k: m[k] for k in ("n", "mae", "rmse", "bias", "r")}
    out["slope"] = float(np.polyfit(age, pred, 1)[0]) if np.ptp(age) > 0 else math.nan
    ci = bootstrap_ci(age_years=age, xray_age=pred, clusters=list(patients), n_boot=1000,
                      seed=seed)
    out["ci95"] = {k: [float(v[0]), float(v[1])] for k, v in ci.items()}
    if bounds is not None:
        out["interval_coverage"] = empirical_coverage(lower=bounds[0], upper=bounds[1],
                                                      age_years=age)
        out["interval_mean_width"] = float(np.mean(bounds[1] - bounds[0]))
    return out


def paired_gain(before: np.ndarray, after: np.ndarray, age: np.ndarray,
                patients: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """MAE(before) − MAE(after) with a 95% patient-bootstrap CI (positive: adaptation
    helped)."""
    err_b, err_a = np.abs(before - age), np.abs(after - age)
    names, index = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(index == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n_boot):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        gains.append(err_b[rows].mean() - err_a[rows].mean())
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return {"mae_gain": float(err_b.mean() - err_a.mean()), "ci95": [float(lo), float(hi)]}


