"""xrayage: X-ray age from a frontal chest radiograph.

The data path reads straight through::

    read_radiograph -> check_quality -> preprocess -> model -> gap/correction/interval/CAM
"""

from __future__ import annotations

from .card import ModelCard, PreprocessSpec
from .errors import XRayAgeError, XRayAgeInputError
from .io import read_radiograph
from .model import bundled_models, load_model
from .predict import AgeEstimate, XRayAge
from .preprocess import preprocess
from .quality import QualityReport, QualityStatus, check_quality
from .radiograph import Radiograph

__version__ = "0.1.0"

__all__ = [
    "AgeEstimate",
    "ModelCard",
    "PreprocessSpec",
    "QualityReport",
    "QualityStatus",
    "Radiograph",
    "XRayAge",
    "XRayAgeError",
    "XRayAgeInputError",
    "__version__",
    "bundled_models",
    "check_quality",
    "load_model",
    "preprocess",
    "read_radiograph",
]
