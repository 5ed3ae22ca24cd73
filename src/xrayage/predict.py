"""X-ray age for radiographs: read -> QC -> preprocess -> ONNX model -> gap, interval, CAM.

:class:`XRayAge` is the public entry point; the CLI, the service and the cluster
engine all call :meth:`XRayAge.predict_many`.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .calibration import interval
from .card import ModelCard
from .errors import XRayAgeInputError
from .io import Source, read_radiograph
from .model import AgeModel, ModelOutput, load_model
from .preprocess import normalize, to_square
from .quality import QualityStatus, check_quality
from .radiograph import Radiograph

RECORD_FIELDS = (
    "path", "xray_age", "xray_age_lower", "xray_age_upper", "chronological_age",
    "age_gap", "age_gap_corrected", "qc_status", "qc_reasons", "error",
)
"""Columns of a result row, in order (CSV header)."""


@dataclass
class AgeEstimate:
    """The X-ray age of one input, or why there is none.

    Attributes
    ----------
    path : str
        The input's label (file path as given, or a name).
    xray_age : float or None
        Predicted age in years; None if the input was rejected or unreadable.
    xray_age_lower, xray_age_upper : float or None
        Conformal prediction interval (coverage in the model card).
    chronological_age : float or None
        From the header or the manifest.
    age_gap : float or None
        ``xray_age - chronological_age``.
    age_gap_corrected : float or None
        The gap corrected for regression to the mean (see
        :class:`~xrayage.card.BiasCorrection`).
    qc_status : {'ok', 'warn', 'reject', 'error'}
    qc_reasons : list of str
        Quality-check codes (see :mod:`xrayage.quality`).
    error : str or None
        Why the input could not be read.
    sigma : float or None
        The model's own predicted standard deviation (Gaussian NLL models).
    heatmap : numpy.ndarray or None
        The class activation map over the square model input (years per location).
    radiograph : Radiograph or None
        The decoded input, when asked for (clinical outputs need it).
    """

    path: str
    xray_age: float | None = None
    xray_age_lower: float | None = None
    xray_age_upper: float | None = None
    chronological_age: float | None = None
    age_gap: float | None = None
    age_gap_corrected: float | None = None
    qc_status: str = "ok"
    qc_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    sigma: float | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    radiograph: Radiograph | None = field(default=None, repr=False)

    def to_record(self, decimals: int = 2) -> dict[str, Any]:
        """Return the CSV/JSON row (see :data:`RECORD_FIELDS`)."""
        row: dict[str, Any] = {}
        for key in RECORD_FIELDS:
            value = getattr(self, key)
            if isinstance(value, float):
                value = round(value, decimals)
            row[key] = value
        return row


@dataclass(frozen=True)
class PredictInput:
    """One thing to predict: a source plus optional overrides from a manifest."""

    source: Source | Radiograph
    name: str
    age_years: float | None = None
    sex: str | None = None
    view: str | None = None


@dataclass
class _Prepared:
    estimate: AgeEstimate
    radiograph: Radiograph | None = None
    tensor: np.ndarray | None = None  # (T, C, S, S): T test-time views


class XRayAge:
    """An X-ray age estimator over an ONNX model.

    Parameters
    ----------
    model : AgeModel
    tta : bool
        Average test-time augmented views (shifts and a zoom).
    batch_size : int
        Images per ONNX call.
    read_workers : int
        Threads that read and preprocess ahead of the model.

    Examples
    --------
    >>> estimator = XRayAge.load()  # doctest: +SKIP
    >>> estimator.predict("chest.dcm").xray_age  # doctest: +SKIP
    63.2
    """

    def __init__(self, model: AgeModel, tta: bool = False, batch_size: int = 8,
                 read_workers: int = 1) -> None:
        self.model = model
        self.tta = tta
        self.batch_size = max(1, batch_size)
        self.read_workers = max(1, read_workers)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] | None = None, *,
             threads: int | None = None, **kwargs: Any) -> XRayAge:
        """Load the bundled default model, another bundled model, or a model directory."""
        return cls(load_model(name_or_path, threads=threads), **kwargs)

    @property
    def card(self) -> ModelCard:
        """The model card of the loaded model."""
        return self.model.card

    def predict(self, x: Source | Radiograph | list[Source | Radiograph], *,
                age_years: float | None = None, sex: str | None = None,
                heatmap: bool = False) -> AgeEstimate | list[AgeEstimate]:
        """Estimate X-ray age for one input or a list of inputs.

        Parameters
        ----------
        x : path, bytes, Radiograph, or a list of them
        age_years, sex : optional
            Override the chronological age and sex read from the header.
        heatmap : bool
            Also return the class activation map.

        Returns
        -------
        AgeEstimate or list of AgeEstimate
            Bad inputs give an estimate with ``error`` set, never an exception.
        """
        many = isinstance(x, list)
        items = [PredictInput(s, _label(s, i), age_years, sex)
                 for i, s in enumerate(x if many else [x])]
        results = list(self.predict_many(items, heatmap=heatmap))
        return results if many else results[0]

    def predict_many(self, items: Iterable[PredictInput], *, heatmap: bool = False,
                     keep_radiograph: bool = False) -> Iterator[AgeEstimate]:
        """Stream estimates, in input order, reading ahead while the model runs."""
        window = self.batch_size * 2
        with ThreadPoolExecutor(self.read_workers, thread_name_prefix="xrayage-read") as pool:
            pending: deque[Future[_Prepared]] = deque()
            batch: list[_Prepared] = []
            iterator = iter(items)
            for item in iterator:
                pending.append(pool.submit(self._prepare, item, keep_radiograph))
                if len(pending) >= window:
                    yield from self._collect(pending.popleft().result(), batch, heatmap)
            while pending:
                yield from self._collect(pending.popleft().result(), batch, heatmap)
            yield from self._flush(batch, heatmap)

    def _collect(self, prepared: _Prepared, batch: list[_Prepared],
                 heatmap: bool) -> Iterator[AgeEstimate]:
        batch.append(prepared)
        if sum(p.tensor is not None for p in batch) >= self.batch_size:
            yield from self._flush(batch, heatmap)

    def _flush(self, batch: list[_Prepared], heatmap: bool) -> Iterator[AgeEstimate]:
        ready = [p for p in batch if p.tensor is not None]
        if ready:
            views = ready[0].tensor.shape[0]  # type: ignore[union-attr]
            stacked = np.concatenate([p.tensor for p in ready])  # type: ignore[misc]
            out = self.model.run(stacked, cam=heatmap)
            for i, prepared in enumerate(ready):
                self._finish(prepared, out, slice(i * views, (i + 1) * views))
        for prepared in batch:
            yield prepared.estimate
        batch.clear()

    def _prepare(self, item: PredictInput, keep_radiograph: bool) -> _Prepared:
        estimate = AgeEstimate(path=item.name, chronological_age=item.age_years)
        try:
            rg = (item.source if isinstance(item.source, Radiograph)
                  else read_radiograph(item.source, name=Path(item.name).name))
        except XRayAgeInputError as exc:
            estimate.qc_status, estimate.error = "error", str(exc)
            return _Prepared(estimate)
        if item.age_years is not None or item.sex or item.view:
            rg = replace(rg, age_years=item.age_years if item.age_years is not None
                         else rg.age_years, sex=item.sex or rg.sex,
                         view_position=item.view or rg.view_position)
        report = check_quality(rg)
        estimate.chronological_age = rg.age_years
        estimate.qc_status, estimate.qc_reasons = report.status.value, report.reasons
        if keep_radiograph:
            estimate.radiograph = rg
        if report.status is QualityStatus.REJECT:
            return _Prepared(estimate, rg)
        return _Prepared(estimate, rg, self._views(rg))

    def _views(self, rg: Radiograph) -> np.ndarray:
        spec = self.card.preprocessing
        img = to_square(rg.pixels, spec)
        views = [img] + (tta_views(img) if self.tta else [])
        return normalize(np.stack(views), spec)

    def _finish(self, prepared: _Prepared, out: ModelOutput, rows: slice) -> None:
        est, card = prepared.estimate, self.card
        est.xray_age = float(np.mean(out.age[rows]))
        est.sigma = None if out.sigma is None else float(np.mean(out.sigma[rows]))
        if out.cam is not None:
            est.heatmap = np.asarray(out.cam[rows.start], dtype=np.float32)
        if card.conformal is not None and (est.sigma is not None or not card.conformal.scaled):
            est.xray_age_lower, est.xray_age_upper = interval(card.conformal, est.xray_age,
                                                              est.sigma)
        age = est.chronological_age
        if age is not None and math.isfinite(age):
            est.age_gap = est.xray_age - age
            if card.bias_correction is not None:
                est.age_gap_corrected = card.bias_correction.corrected_gap(est.xray_age, age)


def tta_views(img: np.ndarray) -> list[np.ndarray]:
    """Test-time views of a square image in [0, 1]: a 6% zoom and ±3% horizontal shifts.

    No flips: the heart's side is anatomy, not noise.
    """
    side = img.shape[0]
    pil = Image.fromarray(img.astype(np.float32), mode="F")
    crop = round(side * 0.03)
    zoom = pil.crop((crop, crop, side - crop, side - crop)).resize((side, side), Image.BILINEAR)
    shift = round(side * 0.03)
    views = [np.asarray(zoom, dtype=np.float32)]
    for dx in (shift, -shift):
        moved = np.zeros_like(img)
        if dx > 0:
            moved[:, dx:] = img[:, :-dx]
        else:
            moved[:, :dx] = img[:, -dx:]
        views.append(moved)
    return views


def _label(source: object, index: int) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, Radiograph):
        return source.name
    return f"<input {index}>"


__all__ = ["RECORD_FIELDS", "AgeEstimate", "PredictInput", "XRayAge", "tta_views"]
