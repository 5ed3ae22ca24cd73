"""The model card: everything needed to use a model correctly, kept beside its weights.

A model directory holds ``model.onnx`` and ``model_card.json``. Preprocessing,
bias correction and the conformal calibration are read from the card, so training,
export and inference can never disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

CARD_FILE = "model_card.json"
CARD_SCHEMA = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """How a radiograph becomes the model's input tensor.

    Attributes
    ----------
    image_size : int
        Side of the square input, in pixels.
    square : {'crop', 'pad'}
        Centre-crop the long side, or pad the short side with black, to a square.
    channels : int
        1, or 3 to repeat the gray image (ImageNet-style models).
    mean, std : tuple of float
        Per-channel normalisation applied to intensities in [0, 1]:
        ``(x - mean) / std``.
    quantize : bool
        Round the resized image to 8 bits first, as the training cache stores it.
    """

    image_size: int = 256
    square: str = "crop"
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    quantize: bool = True

    def __post_init__(self) -> None:
        if self.square not in ("crop", "pad"):
            raise ValueError(f"square must be 'crop' or 'pad', not {self.square!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if not 16 <= self.image_size <= 2048:
            raise ValueError(f"image_size {self.image_size} out of range 16..2048")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError("std must be positive")


@dataclass(frozen=True)
class BiasCorrection:
    """Linear age-bias correction fitted on a held-out reference split.

    On the reference data, ``xray_age ~ slope * age + intercept`` is fitted by least
    squares. The corrected gap is the residual (de Lange & Cole 2020):
    ``age_gap_corrected = xray_age - (slope * age + intercept)``. It is uncorrelated
    with chronological age on the reference data, removing regression to the mean.
    """

    slope: float
    intercept: float
    n: int = 0

    def corrected_gap(self, *, xray_age: float, age_years: float) -> float:
        """Return the corrected age gap in years (both ages by keyword).

        Examples
        --------
        >>> BiasCorrection(slope=0.5, intercept=25.0).corrected_gap(xray_age=60.0,
        ...                                                         age_years=50.0)
        10.0
        """
        return xray_age - (self.slope * age_years + self.intercept)


@dataclass(frozen=True)
class ConformalCalibration:
    """Split-conformal interval for the chronological age of a patient with this X-ray age.

    The interval is ``centre ± half``. The centre is the X-ray age stretched away from the
    calibration mean, ``centre_mean + centre_slope * (xray_age - centre_mean)`` (a slope
    above 1 undoes part of the regression to the mean, so the interval holds in young and
    old patients alike). The half-width is the conformal quantile of the calibration
    scores ``|age - centre|`` of the image's view (Mondrian: one quantile per view in
    `view_quantiles`, `quantile` for any other view), or ``quantile * σ̂`` when `scaled`.
    Cards written before the centre and the views existed read as a plain ``xray_age ±
    quantile``.

    Attributes
    ----------
    coverage : float
        Nominal coverage, e.g. 0.9.
    quantile : float
        The conformal quantile of all calibration scores.
    scaled : bool
        If True the score is ``|y - ŷ| / σ̂`` and the half-width is ``quantile * σ̂``,
        with σ̂ the model's predicted standard deviation; else it is ``|y - ŷ|``.
    n : int
        Calibration images.
    empirical_coverage : float or None
        Coverage measured on data not used to fit the quantile.
    centre_slope, centre_mean : float
        The stretch of the centre (1.0: the centre is the X-ray age).
    view_quantiles : dict of str to float
        Per-view quantiles (``PA``, ``AP``) for views with enough calibration images.
    rates : dict
        Coverage and mean width measured out of fold, overall and by age band, view, sex.
    """

    coverage: float
    quantile: float
    scaled: bool = False
    n: int = 0
    empirical_coverage: float | None = None
    centre_slope: float = 1.0
    centre_mean: float = 0.0
    view_quantiles: dict[str, float] = field(default_factory=dict)
    rates: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContentCheckSpec:
    """The content quality checks of a model (:mod:`xrayage.content`).

    A small ONNX graph (`file`) maps the model's ``features`` output to ``scores``: the
    logits of `classes` (the first is ``frontal_chest``), a child logit, a mirror logit and
    `ood_dims` whitened principal components of frontal adult chest films, whose squared
    norm is the Mahalanobis distance from the training distribution.

    Attributes
    ----------
    file, sha256 : str
        The graph beside the model, and its checksum.
    classes : tuple of str
        ``frontal_chest`` first, then the kinds refused (``lateral``, ``other_body_part``,
        ``not_radiograph``, ``inverted``, ``rotated90``, ``rotated180``).
    reject_below, warn_below : float
        Refuse when p(frontal_chest) is below `reject_below`; warn below `warn_below`.
    child_above : float
        Refuse as a child's film when p(child) reaches it and the header has no age.
    mirrored_above : float
        Warn of a mirrored film when p(mirrored) reaches it.
    ood_above, ood_warn_above : float
        Refuse (warn) when the Mahalanobis distance reaches it.
    ood_dims : int
    rates : dict
        The measured rates of these thresholds (out-of-fold, with n and 95% CIs).
    training : dict
        How the graph was fitted (data, method).
    """

    file: str
    sha256: str
    classes: tuple[str, ...]
    reject_below: float
    warn_below: float
    child_above: float
    mirrored_above: float
    ood_above: float
    ood_warn_above: float
    ood_dims: int
    rates: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes or self.classes[0] != "frontal_chest":
            raise ValueError("content checks: the first class must be 'frontal_chest'")


@dataclass
class ModelCard:
    """Metadata of a trained model, stored as ``model_card.json`` next to the ONNX file."""

    name: str
    version: str
    architecture: str
    preprocessing: PreprocessSpec
    onnx_file: str = "model.onnx"
    onnx_sha256: str | None = None
    outputs: dict[str, str] = field(default_factory=lambda: {"age": "age"})
    training_data: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    bias_correction: BiasCorrection | None = None
    conformal: ConformalCalibration | None = None
    limits: list[str] = field(
        default_factory=lambda: [
            "Adults (18 y and over) only.",
            "Frontal (PA/AP) chest radiographs only.",
            "Research use only; not a medical device.",
        ]
    )
    licence: str = "Apache-2.0"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    content_checks: ContentCheckSpec | None = None
    schema: int = CARD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from :meth:`to_dict` output, checking required fields."""
        try:
            data = dict(data)
            data["preprocessing"] = PreprocessSpec(**data["preprocessing"])
            if data.get("bias_correction"):
                data["bias_correction"] = BiasCorrection(**data["bias_correction"])
            if data.get("conformal"):
                data["conformal"] = ConformalCalibration(**data["conformal"])
            if data.get("content_checks"):
                data["content_checks"] = ContentCheckSpec(**data["content_checks"])
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid model card: {exc}") from exc

    def save(self, directory: str | Path) -> Path:
        """Write ``model_card.json`` into `directory` and return its path."""
        path = Path(directory) / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read a card from a model directory or a JSON file."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read model card {path}: {exc}") from exc


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
