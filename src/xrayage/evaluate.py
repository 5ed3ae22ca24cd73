"""Evaluate an ONNX X-ray age model on a dataset: metrics overall and by sex, view, age band.

Needs no torch: images go through :meth:`~xrayage.predict.XRayAge.predict_many`, the same
stages as ``xrayage predict`` (so the same images are rejected, children included), and the
model runs on ONNX Runtime. Unreadable or QC-rejected images are counted by reason and
listed, never fatal.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .calibration import interval_rates
from .content import REJECT_CODES
from .datasets import filter_samples, load_dataset
from .datasets.splits import Split
from .insample import in_sample_notes
from .metrics import age_band, age_metrics, grouped_metrics
from .model import load_model
from .pipeline import PredictInput
from .predict import XRayAge
from .quality import QualityStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")

JSON_KEYS = ("n", "mae", "rmse", "bias", "r", "r2", "icc", "mae_no_skill")


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    metrics : dict
        :func:`~xrayage.metrics.age_metrics` over all scored images.
    groups : dict
        The same metrics by ``sex``, ``view`` and ``age_band``.
    predictions : list of dict
        ``path, age_years, xray_age, sex, view`` per scored image.
    problems : list of dict
        ``path, status`` (``failed``/``rejected``) and ``reason`` per image not scored.
    notes : list of str
        Caveats, e.g. where the no-skill median came from.
    """

    metrics: dict[str, Any]
    groups: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The one-line JSON object: ``n, mae, rmse, bias, r, r2, icc, mae_no_skill`` first."""
        out = {k: self.metrics[k] for k in JSON_KEYS}
        out.update(age_mean=self.metrics["age_mean"], age_sd=self.metrics["age_sd"],
                   no_skill_median=self.metrics["no_skill_median"],
                   failed=sum(p["status"] == "failed" for p in self.problems),
                   rejected=sum(p["status"] == "rejected" for p in self.problems),
                   excluded=excluded(self.problems),
                   groups=self.groups, notes=self.notes)
        if "interval" in self.metrics:
            out["interval"] = self.metrics["interval"]
        return out


def evaluate(
    dataset: str,
    model: str | os.PathLike[str] | None = None,
    split: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    qc: bool = True,
    all_views: bool = False,
    adults_only: bool = False,
    threads: int | None = None,
    tta: bool = False,
    progress: bool = False,
) -> Evaluation:
    """Score a model on a dataset, through the same stages as ``xrayage predict``.

    Parameters
    ----------
    dataset : str
        Dataset spec (``nih:/data/nih``, ``manifest:/data/manifest.csv?source=nih_cxr14``),
        or the path of a manifest CSV.
    model : str or path, optional
        Bundled model name or model directory (default: the bundled model).
    split : {'train', 'val', 'test'}, optional
        Keep only that split's patients, from ``run_dir/split.json``.
    run_dir : path, optional
        The training run directory (needed with `split`).
    batch_size : int
    qc : bool
        Skip (and count) images the quality checks reject, children included, exactly as
        ``predict`` does; False scores every readable image.
    all_views, adults_only : bool
        Dataset filters (default: frontal views, all ages).
    threads : int, optional
        ONNX Runtime threads.
    tta : bool
        Average test-time augmented views, as ``predict --tta``.
    progress : bool
        Show a progress bar on stderr (rich; only when stderr is a terminal).

    Returns
    -------
    Evaluation
    """
    if ":" not in dataset.split("?", 1)[0] and dataset.lower().endswith(".csv"):
        dataset = f"manifest:{dataset}"
    # A training run's split refers to the data as training loaded it (NIH: train_val list).
    role = "train" if split is not None else "eval"
    samples = filter_samples(load_dataset(dataset, role=role).samples,
                             frontal_only=not all_views, adults_only=adults_only)
    if split is not None:
        if run_dir is None:
            raise ValueError("--split needs --run-dir (the training run holding split.json)")
        samples = Split.load(Path(run_dir) / "split.json").assign(samples, split)
    if not samples:
        raise ValueError(f"{dataset}: no samples to evaluate after filtering")
    estimator = XRayAge(load_model(model, threads=threads), tta=tta, batch_size=batch_size,
                        allow=() if qc else REJECT_CODES)
    notes = in_sample_notes(estimator.card.training_data, [s.patient_id for s in samples],
                            [s.source for s in samples])
    for note in notes:
        logger.warning("%s", note)
    median = estimator.card.metrics.get("train_median_age")
    if median is None:
        notes.append("no training median in the model card: mae_no_skill uses the evaluated "
                     "data's own median (optimistic)")
    items = [PredictInput(str(s.path), str(s.path), s.age_years, s.sex or None, s.view or None)
             for s in samples]
    predictions: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    estimates = _with_progress(estimator.predict_many(items, checks=None if qc else []),
                               len(items), progress)
    for s, est in zip(samples, estimates, strict=True):
        if est.xray_age is None:
            failed = est.failure is not None
            problems.append({"path": est.path, "status": "failed" if failed else "rejected",
                             "reason": est.error if failed else ",".join(
                                 f.code for f in est.quality.findings
                                 if f.status is QualityStatus.REJECT)})
            continue
        predictions.append({"path": est.path, "patient_id": s.patient_id,
                            "age_years": est.age_years, "xray_age": est.xray_age,
                            "age_interval_lower": est.age_interval_lower,
                            "age_interval_upper": est.age_interval_upper,
                            "sex": s.sex, "view": s.view})
    if problems:
        logger.warning("%d of %d images not scored: %s", len(problems), len(samples),
                       ", ".join(f"{n} {why}" for why, n in excluded(problems).items()))
    return Evaluation(*score(predictions, median), predictions, problems, notes)


def _with_progress(items: Iterator[T], total: int, show: bool) -> Iterator[T]:
    """Yield `items`, advancing a rich progress bar on stderr when `show` and stderr is a
    terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not (show and console.is_terminal)) as bar:
        task = bar.add_task("evaluate", total=total)
        for item in items:
            yield item
            bar.advance(task)


def excluded(problems: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many images were not scored, by reason: ``failed`` (unreadable) or a quality-check
    code (``child``, ``lateral_view``, ...), most frequent first."""
    counts = Counter("failed" if p["status"] == "failed" else p["reason"] for p in problems)
    return dict(counts.most_common())


def score(predictions: Sequence[dict[str, Any]], train_median: float | None = None
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`~xrayage.metrics.age_metrics` of prediction rows (``age_years, xray_age, sex,
    view``, as in :attr:`Evaluation.predictions` or a ``probe_oof.csv``), and the same by
    sex, view and age band; with ``age_interval_lower/upper`` in every row, also the
    interval's coverage and width (``metrics["interval"]``, :func:`interval_rates`)."""
    ages = np.asarray([float(r["age_years"]) for r in predictions], dtype=np.float64)
    xray = np.asarray([float(r["xray_age"]) for r in predictions], dtype=np.float64)
    groups = grouped_metrics(age_years=ages, xray_age=xray, groups={
        "sex": [r["sex"] for r in predictions], "view": [r["view"] for r in predictions],
        "age_band": [age_band(a) for a in ages]}, train_median=train_median)
    metrics = age_metrics(age_years=ages, xray_age=xray, train_median=train_median)
    if predictions and all(r.get("age_interval_lower") is not None for r in predictions):
        metrics["interval"] = interval_rates(
            lower=[r["age_interval_lower"] for r in predictions],
            upper=[r["age_interval_upper"] for r in predictions], age_years=ages,
            views=[r["view"] for r in predictions], sexes=[r["sex"] for r in predictions])
    return metrics, groups


def plot(result: Evaluation, directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``scatter.png`` (with identity line) and ``bland_altman.png``; return the paths.

    The plots of :mod:`xrayage.plots` (extra ``analysis``), as ``xrayage analyze`` draws them.
    """
    from .plots import plot_bland_altman, plot_scatter

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ages = [p["age_years"] for p in result.predictions]
    xray = [p["xray_age"] for p in result.predictions]
    m = result.metrics
    scatter = plot_scatter(xray_age=xray, age_years=ages)
    scatter.set_title(f"n={m['n']}  MAE={m['mae']:.2f}  r={m['r']:.2f}")
    agreement = plot_bland_altman(xray_age=xray, age_years=ages)
    paths = [out / "scatter.png", out / "bland_altman.png"]
    for ax, path in zip((scatter, agreement), paths, strict=True):
        ax.figure.savefig(path, dpi=120)
    return paths
