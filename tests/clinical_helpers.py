"""Shared helpers of the clinical-output tests: estimates on real fixtures, dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage import AgeEstimate, XRayAge
from xrayage.predict import PredictInput

from .onnx_factory import build_tiny_model


def make_estimator(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    """The tiny exact ONNX model (conformal interval and bias correction in its card)."""
    return XRayAge.load(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def predict_kept(estimator: XRayAge, source: Path | bytes, name: str | None = None,
                 heatmap: bool = True) -> AgeEstimate:
    """Predict one input, keeping the radiograph (and the heat map) on the estimate."""
    label = name or str(source)
    item = PredictInput(source, label)
    return next(estimator.predict_many([item], heatmap=heatmap, keep_radiograph=True))


def png_bytes(size: tuple[int, int] = (320, 300), seed: int = 0) -> bytes:
    """A random 8-bit gray PNG (a non-DICOM input)."""
    arr = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy; return its Error and Warning lines (skip if dicom3tools is absent)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return ([ln for ln in lines if ln.startswith("Error")],
            [ln for ln in lines if ln.startswith("Warning")])
