"""X-ray age for radiographs: the :class:`XRayAge` estimator.

A thin, stateful front of :mod:`xrayage.pipeline` (read -> QC -> preprocess -> ONNX model ->
gap, interval, CAM) that holds a loaded model and its settings. The CLI, the service, the
DICOM node and ``xrayage evaluate`` call :meth:`XRayAge.predict_many`.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator
from typing import Any, overload

from .card import ModelCard
from .estimate import RECORD_FIELDS, AgeEstimate
from .io import DEFAULT_MAX_PIXELS, Source
from .model import AgeModel, load_model
from .pipeline import PredictInput, label, stream
from .preprocess import tta_views
from .quality import Check
from .radiograph import Radiograph


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
    max_pixels : int
        Largest image decoded (rows x columns x samples).
    allow : collection of str
        Refusal codes to relax to warnings (``{"lateral_view", "content_lateral"}``, say);
        by default every check refuses.

    Examples
    --------
    >>> estimator = XRayAge.load()  # doctest: +SKIP
    >>> estimator.predict("chest.dcm").xray_age  # doctest: +SKIP
    63.2
    """

    def __init__(self, model: AgeModel, tta: bool = False, batch_size: int = 8,
                 read_workers: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow: Collection[str] = ()) -> None:
        self.model = model
        self.allow = frozenset(allow)
        self.tta = tta
        self.batch_size = max(1, batch_size)
        self.read_workers = max(1, read_workers)
        self.max_pixels = max_pixels

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] | None = None, *,
             threads: int | None = None, **kwargs: Any) -> XRayAge:
        """Load the bundled default model, another bundled model, or a model directory."""
        return cls(load_model(name_or_path, threads=threads), **kwargs)

    @property
    def card(self) -> ModelCard:
        """The model card of the loaded model."""
        return self.model.card

    @overload
    def predict(self, x: list[Source | Radiograph], *, age_years: float | None = None,
                sex: str | None = None, heatmap: bool = False) -> list[AgeEstimate]: ...

    @overload
    def predict(self, x: Source | Radiograph, *, age_years: float | None = None,
                sex: str | None = None, heatmap: bool = False) -> AgeEstimate: ...

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
            A list for a list. Bad inputs give an estimate with ``failure`` set, never an
            exception.
        """
        sources = x if isinstance(x, list) else [x]
        items = [PredictInput(s, label(s, i), age_years, sex) for i, s in enumerate(sources)]
        results = list(self.predict_many(items, heatmap=heatmap))
        return results if isinstance(x, list) else results[0]

    def predict_many(self, items: Iterable[PredictInput], *, heatmap: bool = False,
                     keep_radiograph: bool = False,
                     checks: list[Check] | None = None) -> Iterator[AgeEstimate]:
        """Stream estimates, in input order, reading ahead while the model runs.

        Parameters
        ----------
        items : iterable of PredictInput
        heatmap : bool
            Also compute the class activation maps.
        keep_radiograph : bool
            Keep the decoded pixels in each estimate (overlays, Secondary Capture, report).
        checks : list of callables, optional
            Quality checks (default :data:`xrayage.quality.CHECKS`).
        """
        return stream(self.model, items, tta=self.tta, heatmap=heatmap,
                      keep_radiograph=keep_radiograph, batch_size=self.batch_size,
                      read_workers=self.read_workers, checks=checks, allow=self.allow,
                      max_pixels=self.max_pixels)


__all__ = ["RECORD_FIELDS", "AgeEstimate", "PredictInput", "XRayAge", "tta_views"]
