"""Turn a radiograph into the model's input, as the model card specifies.

Two pure steps, shared by training (which caches the first) and inference:

1. :func:`to_square`: square crop or pad, then antialiased resize, giving a
   float32 (S, S) image in [0, 1] (rounded to 8 bits when the card says so).
2. :func:`normalize`: repeat to the card's channels and apply ``(x - mean) / std``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .card import PreprocessSpec
from .radiograph import Radiograph


def square(pixels: np.ndarray, mode: str = "crop") -> np.ndarray:
    """Centre-crop (``crop``) or zero-pad (``pad``) a 2-D image to a square."""
    rows, cols = pixels.shape
    if rows == cols:
        return pixels
    if mode == "crop":
        side = min(rows, cols)
        top, left = (rows - side) // 2, (cols - side) // 2
        return pixels[top : top + side, left : left + side]
    side = max(rows, cols)
    out = np.zeros((side, side), dtype=pixels.dtype)
    top, left = (side - rows) // 2, (side - cols) // 2
    out[top : top + rows, left : left + cols] = pixels
    return out


def to_square(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Square and resize an image in [0, 1] to ``spec.image_size``.

    Parameters
    ----------
    pixels : numpy.ndarray
        float (rows, columns) in [0, 1], e.g. :attr:`Radiograph.pixels`.
    spec : PreprocessSpec

    Returns
    -------
    numpy.ndarray
        float32 (image_size, image_size) in [0, 1].

    Examples
    --------
    >>> to_square(np.ones((600, 400), np.float32), PreprocessSpec(image_size=64)).shape
    (64, 64)
    """
    img = square(np.asarray(pixels, dtype=np.float32), spec.square)
    size = spec.image_size
    if img.shape[0] != size:
        # PIL's BILINEAR widens its kernel when shrinking, so this is antialiased.
        img = np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BILINEAR))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if spec.quantize:
        img = np.round(img * 255.0).astype(np.float32) / 255.0
    return img


def normalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Map a (S, S) or (N, S, S) image in [0, 1] to normalised (…, C, S, S) float32."""
    img = np.asarray(img, dtype=np.float32)
    x = np.repeat(img[..., None, :, :], spec.channels, axis=-3)
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return (x - mean) / std


def preprocess(rg: Radiograph | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Return the model input for one radiograph: float32 (C, S, S)."""
    pixels = rg.pixels if isinstance(rg, Radiograph) else rg
    return normalize(to_square(pixels, spec), spec)
