"""The prediction path, stage by stage, as public functions every entry point calls.

::

    PredictInput --prepare()--> Prepared --estimate_batches()--> AgeEstimate
                   read_radiograph            AgeModel.run (age, CAM, features)
                   check_quality              content checks on the features
                   to_square + model_input    postprocess.finish

:func:`prepare` reads, checks and preprocesses one input (no model needed, so it runs in
reader threads, Ray tasks or cache workers); :func:`estimate_batches` runs the model on
batches of prepared inputs and finishes each estimate; :func:`stream` does both with
read-ahead. :class:`~xrayage.predict.XRayAge`, ``xrayage evaluate``, the training cache, the
Ray engine, the REST service and the DICOM node all go through these functions.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .card import PreprocessSpec
from .errors import XRayAgeInputError
from .estimate import AgeEstimate, FailureKind, InputFailure, SourceInfo
from .io import DEFAULT_MAX_PIXELS, Source, read_radiograph
from .model import AgeModel
from .postprocess import finish, model_identity
from .preprocess import model_input, to_square, tta_mean_map
from .quality import Check, QualityReport, QualityStatus, check_quality
from .radiograph import Radiograph

FeatureSink = Callable[[AgeEstimate, np.ndarray], None]
"""A receiver of the model's ``features`` of each estimated input (``on_features=``)."""


@dataclass(frozen=True)
class PredictInput:
    """One thing to predict: a source plus optional overrides from a manifest.

    Attributes
    ----------
    source : path, bytes, file object or Radiograph
    name : str
        The row label (the path as given, or a name such as ``upload``).
    age_years : float, optional
        Chronological age; overrides the header's.
    sex : {'M', 'F', 'O'}, optional
    view : str, optional
        DICOM ViewPosition (``PA``, ``AP``, ...); overrides the header's.
    """

    source: Source | Radiograph
    name: str
    age_years: float | None = None
    sex: str | None = None
    view: str | None = None


@dataclass(frozen=True)
class Prepared:
    """An input after the read, quality-check and preprocess stages.

    Attributes
    ----------
    estimate : AgeEstimate
        The estimate so far: label, chronological age, quality report or failure, source.
    square : numpy.ndarray or None
        float32 (S, S) in [0, 1]: the squared, resized image (what the training cache stores).
    tensor : numpy.ndarray or None
        float32 (T, C, S, S) model input (T test-time views); None when rejected or unreadable.
    """

    estimate: AgeEstimate
    square: np.ndarray | None = field(default=None, repr=False)
    tensor: np.ndarray | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        """True when the model should run on this input."""
        return self.tensor is not None

    def metadata(self) -> dict[str, Any]:
        """The estimate so far as JSON-ready data (no pixels, no DICOM header): what a Ray
        task sends to an inference actor beside the tensor."""
        est = self.estimate
        return {"path": est.path, "age_years": est.age_years,
                "quality": est.quality.to_dict(),
                "failure": None if est.failure is None else est.failure.to_dict()}

    @classmethod
    def from_metadata(cls, data: dict[str, Any], tensor: np.ndarray | None) -> Prepared:
        """Inverse of :meth:`metadata`, with the model input."""
        failure = data.get("failure")
        est = AgeEstimate(path=data["path"], age_years=data.get("age_years"),
                          quality=QualityReport.from_dict(data.get("quality") or []),
                          failure=None if failure is None else InputFailure.from_dict(failure))
        return cls(est, None, tensor)


def prepare(item: PredictInput, spec: PreprocessSpec, *, tta: bool = False,
            checks: list[Check] | None = None, allow: Collection[str] = (),
            keep_radiograph: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
    """Read, quality-check and preprocess one input; never raises for a bad input.

    Parameters
    ----------
    item : PredictInput
    spec : PreprocessSpec
        The model card's preprocessing.
    tta : bool
        Also make the test-time views.
    checks : list of callables, optional
        Quality checks (default :data:`xrayage.quality.CHECKS`).
    allow : collection of str
        Refusal codes the user allows (they become warnings), e.g. ``{"lateral_view"}``.
    keep_radiograph : bool
        Keep the decoded pixels in the estimate (overlays, Secondary Capture, report).
    max_pixels : int
        Refuse larger images before decoding.

    Returns
    -------
    Prepared
        With a tensor, unless the input was unreadable (``estimate.failure``) or the
        quality checks rejected it.

    Examples
    --------
    >>> import numpy as np
    >>> rg = Radiograph(np.random.default_rng(0).random((300, 300), np.float32))
    >>> p = prepare(PredictInput(rg, "x", age_years=12.0), PreprocessSpec(image_size=64))
    >>> p.accepted, p.estimate.qc_reasons
    (False, ['view_unknown', 'child'])
    """
    estimate = AgeEstimate(path=item.name, age_years=item.age_years)
    try:
        rg = (item.source if isinstance(item.source, Radiograph)
              else read_radiograph(item.source, name=Path(item.name).name,
                                   max_pixels=max_pixels))
    except XRayAgeInputError as exc:
        return Prepared(replace(estimate, failure=InputFailure.from_exception(exc)))
    if item.age_years is not None or item.sex or item.view:
        rg = replace(rg, age_years=item.age_years if item.age_years is not None
                     else rg.age_years, sex=item.sex or rg.sex,
                     view_position=item.view or rg.view_position)
    report = check_quality(rg, checks).relaxed(allow)
    estimate = replace(estimate, age_years=rg.age_years, quality=report,
                       source=SourceInfo.of(rg), radiograph=rg if keep_radiograph else None)
    if report.status is QualityStatus.REJECT:
        return Prepared(estimate)
    square = to_square(rg.pixels, spec)
    if not np.isfinite(square).all():  # NaN or infinity from a window, rescale or LUT
        return Prepared(replace(estimate, failure=InputFailure(
            FailureKind.NON_FINITE, f"{item.name}: the decoded image holds NaN or infinite "
            "values (a non-finite window, rescale or LUT in the file?)")))
    return Prepared(estimate, square, model_input(square, spec, tta))


def estimate_batches(model: AgeModel, prepared: Iterable[Prepared], *, batch_size: int = 8,
                     heatmap: bool = False, allow: Collection[str] = (),
                     on_features: FeatureSink | None = None) -> Iterator[AgeEstimate]:
    """Run the model on prepared inputs in batches; yield finished estimates in input order.

    Parameters
    ----------
    model : AgeModel
    prepared : iterable of Prepared
        Every one yields an estimate; rejected and unreadable ones pass through.
    batch_size : int
        Accepted inputs per model call.
    heatmap : bool
        Also compute the class activation maps.
    allow : collection of str
        Refusal codes of the content checks the user allows (they become warnings).
    on_features : callable, optional
        Called as ``on_features(estimate, features)`` for each input that got an X-ray age,
        with the model's ``features`` output (float32 (D,), the mean over test-time views),
        in input order (site adaptation, :mod:`xrayage.adapt`, reads them so).
    """
    batch: list[Prepared] = []
    for p in prepared:
        batch.append(p)
        if sum(q.accepted for q in batch) >= max(1, batch_size):
            yield from run_batch(model, batch, heatmap=heatmap, allow=allow,
                                 on_features=on_features)
            batch = []
    yield from run_batch(model, batch, heatmap=heatmap, allow=allow, on_features=on_features)


def run_batch(model: AgeModel, batch: Sequence[Prepared], *, heatmap: bool = False,
              allow: Collection[str] = (), on_features: FeatureSink | None = None
              ) -> list[AgeEstimate]:
    """One model call over the accepted inputs of `batch`; an estimate for every input.

    With content checks in the model (:attr:`AgeModel.content`), their findings join each
    estimate's quality report, and an input they refuse gets no X-ray age. `on_features`
    is as in :func:`estimate_batches`.
    """
    ready = [p for p in batch if p.tensor is not None]
    finished: dict[int, AgeEstimate] = {}
    if ready:
        tensors = [p.tensor for p in ready if p.tensor is not None]
        views, side = tensors[0].shape[0], tensors[0].shape[-1]
        content = model.content
        out = model.run(np.concatenate(tensors), cam=heatmap,
                        features=content is not None or on_features is not None)
        scores = (content.scores(out.features[::views]) if content is not None
                  and out.features is not None else [None] * len(ready))
        for i, (p, score) in enumerate(zip(ready, scores, strict=True)):
            est = p.estimate
            if content is not None and score is not None:
                found = QualityReport(content.findings(score, est.age_years)).relaxed(allow)
                est = replace(est, quality=est.quality.extended(found.findings))
                if est.quality.status is QualityStatus.REJECT:
                    finished[id(p)] = replace(est, model=model_identity(model.card))
                    continue
            rows = slice(i * views, (i + 1) * views)
            sigma = None if out.sigma is None else float(np.mean(out.sigma[rows]))
            cam = None if out.cam is None else tta_mean_map(out.cam[rows], side)
            finished[id(p)] = finish(est, model.card, float(np.mean(out.age[rows])), sigma, cam)
            if on_features is not None and out.features is not None:
                on_features(finished[id(p)], out.features[rows].mean(axis=0))
    return [finished.get(id(p), p.estimate) for p in batch]


def stream(model: AgeModel, items: Iterable[PredictInput], *, tta: bool = False,
           heatmap: bool = False, keep_radiograph: bool = False, batch_size: int = 8,
           read_workers: int = 1, checks: list[Check] | None = None,
           allow: Collection[str] = (), max_pixels: int = DEFAULT_MAX_PIXELS,
           on_features: FeatureSink | None = None) -> Iterator[AgeEstimate]:
    """:func:`prepare` in reader threads and :func:`estimate_batches`, in input order.

    At most ``2 * batch_size`` inputs are read ahead, so memory stays bounded on an
    archive of any size. `on_features` is as in :func:`estimate_batches`.
    """
    spec = model.card.preprocessing
    window = max(1, batch_size) * 2

    def read(item: PredictInput) -> Prepared:
        return prepare(item, spec, tta=tta, checks=checks, allow=allow,
                       keep_radiograph=keep_radiograph, max_pixels=max_pixels)

    with ThreadPoolExecutor(max(1, read_workers), thread_name_prefix="xrayage-read") as pool:
        def ahead() -> Iterator[Prepared]:
            pending: deque[Future[Prepared]] = deque()
            for item in items:
                pending.append(pool.submit(read, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

        yield from estimate_batches(model, ahead(), batch_size=batch_size, heatmap=heatmap,
                                    allow=allow, on_features=on_features)


def label(source: object, index: int) -> str:
    """The row label of a source given without a name: its path, or ``<input N>``."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, Radiograph):
        return source.name
    return f"<input {index}>"


__all__ = ["FeatureSink", "PredictInput", "Prepared", "estimate_batches", "label", "prepare",
           "run_batch", "stream"]
