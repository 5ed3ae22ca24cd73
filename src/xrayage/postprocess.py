"""The post-processing stage: from the model's raw output to an :class:`AgeEstimate`.

Gap, bias-corrected gap (see :class:`~xrayage.card.BiasCorrection`), the conformal interval
for the chronological age (:func:`~xrayage.calibration.interval`, by the image's view) and
the heat map, all as the model card says.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .calibration import interval
from .card import ModelCard
from .estimate import AgeEstimate, FailureKind, InputFailure, ModelIdentity


def model_identity(card: ModelCard) -> ModelIdentity:
    """The :class:`ModelIdentity` written into every estimate of a model."""
    return ModelIdentity(card.name, card.version, card.onnx_sha256)


def finish(estimate: AgeEstimate, card: ModelCard, age: float, sigma: float | None = None,
           heatmap: np.ndarray | None = None) -> AgeEstimate:
    """Complete an estimate of an accepted input with the model's output.

    Parameters
    ----------
    estimate : AgeEstimate
        What the earlier stages knew (:attr:`xrayage.pipeline.Prepared.estimate`).
    card : ModelCard
        Supplies the bias correction and the conformal calibration.
    age : float
        The model's X-ray age in years (the mean over test-time views).
    sigma : float, optional
        The model's predicted standard deviation (Gaussian NLL heads).
    heatmap : numpy.ndarray, optional
        The class activation map.

    Returns
    -------
    AgeEstimate
        A new estimate; a non-finite `age` gives a :attr:`FailureKind.NON_FINITE` failure
        and no numbers.

    Examples
    --------
    >>> from xrayage.card import ModelCard, PreprocessSpec
    >>> card = ModelCard("m", "1", "test", PreprocessSpec())
    >>> finish(AgeEstimate("a.png", age_years=50.0), card, 53.0).age_gap
    3.0
    """
    ident = model_identity(card)
    if not math.isfinite(age) or (sigma is not None and not math.isfinite(sigma)):
        return replace(estimate, model=ident, failure=InputFailure(
            FailureKind.NON_FINITE, f"{estimate.path}: the model's output is not a finite "
            "number (NaN or infinite values in the image?)"))
    lower = upper = None
    if card.conformal is not None and (sigma is not None or not card.conformal.scaled):
        view = estimate.source.view_position if estimate.source is not None else None
        lower, upper = interval(card.conformal, age, sigma, view=view)
    gap = corrected = None
    chrono = estimate.age_years
    if chrono is not None and math.isfinite(chrono):
        gap = age - chrono
        if card.bias_correction is not None:
            corrected = card.bias_correction.corrected_gap(xray_age=age, age_years=chrono)
    return replace(estimate, xray_age=age, age_interval_lower=lower, age_interval_upper=upper,
                   age_gap=gap, age_gap_corrected=corrected, model=ident, sigma=sigma,
                   heatmap=None if heatmap is None else np.asarray(heatmap, np.float32))


__all__ = ["finish", "model_identity"]
