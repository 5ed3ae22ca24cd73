"""Saliency: the class activation map (CAM) of the GAP -> linear head, as an overlay.

For a head ``age = b + w · GAP(F)``, the map ``M = Σ_c w_c F_c`` satisfies
``mean(M) + b = age`` exactly: each location's value is its contribution to the
X-ray age, in years. The ONNX model computes ``M`` as its ``cam`` output, so no
gradients are needed. Displayed maps are smoothed (a Gaussian of a twelfth of the map's
side: a grid-pooled head's map jumps at its cell borders), upsampled bicubically and
scaled to [0, 1] per image; :func:`colour_bar` and :data:`LEGEND` explain the colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .card import PreprocessSpec
from .preprocess import square

# Anchor colours of matplotlib's "inferno" map, for an overlay without matplotlib.
_INFERNO = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
     [250, 193, 39], [252, 255, 164]], dtype=np.float64,
) / 255.0


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB float colours in [0, 1] (inferno-like)."""
    x = np.clip(values, 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (x - lo)[..., None]
    return _INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac


def normalize_cam(cam: np.ndarray) -> np.ndarray:
    """Scale a CAM (h, w) to [0, 1]: 0 at its minimum, 1 at its maximum."""
    cam = np.asarray(cam, dtype=np.float64)
    lo, hi = float(cam.min()), float(cam.max())
    return np.zeros_like(cam) if hi - lo < 1e-12 else (cam - lo) / (hi - lo)


LEGEND = ("Heat map: each region's contribution to the X-ray age, scaled per image "
          "(dark = least, bright = most)")
"""The caption of the colour scale, as the report and the Secondary Capture print it."""


def smooth_cam(cam: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Blur a CAM (h, w) with a Gaussian, for display (edges reflected).

    Parameters
    ----------
    cam : ndarray
        The map.
    sigma : float, optional
        In map pixels; default a twelfth of the map's larger side (0: unchanged).

    Returns
    -------
    ndarray
        float64, same shape; its mean stays that of `cam` up to the edge reflection.
    """
    cam = np.asarray(cam, dtype=np.float64)
    sigma = max(cam.shape) / 12.0 if sigma is None else float(sigma)
    if sigma <= 0 or min(cam.shape) < 2:
        return cam
    radius = max(1, round(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = cam
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric" if radius < out.shape[axis] else "edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return out


def colour_bar(width: int, height: int) -> Image.Image:
    """The overlay's colour scale as an RGB image, dark (left) to bright (right)."""
    ramp = colormap(np.linspace(0.0, 1.0, max(2, width)))
    rgb = np.repeat(ramp[None, :, :], max(1, height), axis=0)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")


def overlay(pixels: np.ndarray, cam: np.ndarray, spec: PreprocessSpec,
            alpha: float = 0.4, max_side: int = 1024) -> Image.Image:
    """Return an RGB image: the squared radiograph with the smoothed CAM blended on top."""
    base = square(np.asarray(pixels, dtype=np.float32), spec.square)
    if max(base.shape) > max_side:
        base = np.asarray(Image.fromarray(base, mode="F").resize(
            (max_side, max_side), Image.Resampling.BILINEAR))
    heat = np.asarray(
        Image.fromarray(normalize_cam(smooth_cam(cam)).astype(np.float32), mode="F").resize(
            base.shape[::-1], Image.Resampling.BICUBIC), dtype=np.float64)
    heat = np.clip(heat, 0.0, 1.0)  # bicubic overshoots a little
    rgb = (1 - alpha) * np.repeat(np.clip(base, 0, 1)[..., None], 3, axis=2)
    rgb += alpha * colormap(heat)
    return Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")


def save_overlay(path: str | Path, pixels: np.ndarray, cam: np.ndarray,
                 spec: PreprocessSpec) -> Path:
    """Write :func:`overlay` as a PNG and return its path."""
    path = Path(path)
    overlay(pixels, cam, spec).save(path)
    return path
