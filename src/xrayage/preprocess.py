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
        img = np.asarray(Image.fromarray(img, mode="F").resize(
            (size, size), Image.Resampling.BILINEAR))
    # clip() of float32 returns a new float32 array, never the caller's: the rounding
    # below works in place, with the same float32 operations as round(img * 255) / 255.
    img = np.clip(img, 0.0, 1.0)
    if spec.quantize:
        img *= np.float32(255.0)
        np.round(img, out=img)
        img /= np.float32(255.0)
    return img


def normalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Map a (S, S) or (N, S, S) image in [0, 1] to normalised (…, C, S, S) float32."""
    img = np.asarray(img, dtype=np.float32)
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    # Broadcasting the channel axis gives the values of repeat-then-subtract with one
    # new array, divided in place.
    x = np.subtract(img[..., None, :, :], mean)
    if x.shape[-3] != spec.channels:  # one mean and std for several channels
        x = np.repeat(x, spec.channels, axis=-3)
    x /= std
    return x


def preprocess(rg: Radiograph | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Return the model input for one radiograph: float32 (C, S, S)."""
    pixels = rg.pixels if isinstance(rg, Radiograph) else rg
    return normalize(to_square(pixels, spec), spec)


TTA_ZOOM = 0.03
"""Each side of the square image cropped away by the zoomed test-time view."""

TTA_SHIFT = 0.03
"""Horizontal shift of the two shifted test-time views, as a share of the side."""


def tta_views(img: np.ndarray) -> list[np.ndarray]:
    """Test-time views of a square image in [0, 1]: a 6% zoom and ±3% horizontal shifts.

    No flips: the heart's side is anatomy, not noise.

    Examples
    --------
    >>> [v.shape for v in tta_views(np.zeros((64, 64), np.float32))]
    [(64, 64), (64, 64), (64, 64)]
    """
    side = img.shape[0]
    pil = Image.fromarray(img.astype(np.float32), mode="F")
    crop = round(side * TTA_ZOOM)
    zoom = pil.crop((crop, crop, side - crop, side - crop)).resize(
        (side, side), Image.Resampling.BILINEAR)
    shift = round(side * TTA_SHIFT)
    views = [np.asarray(zoom, dtype=np.float32)]
    for dx in (shift, -shift):
        moved = np.zeros_like(img)
        if dx > 0:
            moved[:, dx:] = img[:, :-dx]
        else:
            moved[:, :dx] = img[:, -dx:]
        views.append(moved)
    return views


def tta_mean_map(maps: np.ndarray, side: int) -> np.ndarray:
    """The mean of the heat maps of an image and its :func:`tta_views`, in the image's frame.

    Each view's map is mapped back by the inverse of its view's geometry (the zoom undone,
    the shift shifted back); what it gave to parts of the view that show no part of the
    image (the shifts' black margins) is spread evenly, so each map keeps its sum. The
    mean of the result is therefore the mean of the views' map means: with the head's bias
    added, the X-ray age averaged over the views, as the map of one view is.

    Parameters
    ----------
    maps : numpy.ndarray
        (T, h, w) maps of the image (first) and its T - 1 views, in the order of
        :func:`model_input` with ``tta=True``.
    side : int
        Side of the square model input, in pixels.

    Returns
    -------
    numpy.ndarray
        (h, w) float32.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[0] == 1:
        return maps[0]
    h, w = maps.shape[1:]
    crop, shift = round(side * TTA_ZOOM) / side, round(side * TTA_SHIFT) / side
    scale = 1.0 / (1.0 - 2.0 * crop)
    # output (image) coordinates -> the view's map coordinates, per view
    affine = [(scale, 0.0, -crop * w * scale, 0.0, scale, -crop * h * scale),
              (1.0, 0.0, shift * w, 0.0, 1.0, 0.0),
              (1.0, 0.0, -shift * w, 0.0, 1.0, 0.0)]
    out = [maps[0]]
    for view_map, data in zip(maps[1:], affine, strict=True):
        back = Image.fromarray(view_map, mode="F").transform(
            (w, h), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0.0)
        mapped = np.asarray(back, dtype=np.float32) * (data[0] * data[4])  # cells per cell
        mapped += (float(view_map.sum()) - float(mapped.sum())) / mapped.size
        out.append(mapped)
    return np.stack(out).mean(axis=0, dtype=np.float32)


def model_input(img: np.ndarray, spec: PreprocessSpec, tta: bool = False) -> np.ndarray:
    """The model input of a squared image (:func:`to_square`): float32 (T, C, S, S).

    ``T`` is 1, or 4 with `tta` (the image and its :func:`tta_views`).
    """
    return normalize(np.stack([img, *(tta_views(img) if tta else [])]), spec)
