"""The memory budget of decoding one image: estimated from the header, before decoding.

Reading a radiograph costs far more memory than its pixel count suggests: the decoded
samples, the decoder's own buffer, and the float working copies of the display
transform (DICOM rescale and window in float64) all exist at once. The estimate is
``rows x columns x samples x bytes per pixel`` with the bytes per pixel of each path
measured on the whole pipeline (``benchmarks/bench_decode_memory.py``; the ONNX model
and the interpreter come on top, about 250 MB with the bundled model):

======================  ==================  ============================
path                    bytes per pixel     8944 x 8944 needs
======================  ==================  ============================
DICOM, grayscale        30 + 2 x stored     2.5 GiB (16-bit): refused
DICOM / PNG / JPEG RGB  40                  3.0 GiB: refused (a JPEG: 1/2 scale)
PNG/JPEG grayscale      8                   0.6 GiB: accepted
======================  ==================  ============================

An image over the budget is refused (:class:`~xrayage.errors.ImageTooLargeError`, the
failure kind ``too_large``, HTTP 413) before any pixel is decoded, except a JPEG, which
is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's draft mode) until it
fits: the model reads a few hundred pixels, so nothing it uses is lost.

The budget is a process-wide setting: :func:`set_memory_budget`, the environment
variable ``XRAYAGE_MEMORY_BUDGET_MB``, or ``--memory-budget-mb`` of ``xrayage serve`` and
``xrayage dicom-node``. The default (:data:`DEFAULT_MEMORY_BUDGET`, 640 MiB) keeps one
image, model included, under 1 GB of peak resident memory; each concurrent worker
thread can use that much.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import ImageTooLargeError

DEFAULT_MEMORY_BUDGET = 640 << 20
"""Decode budget of one image (bytes): with the model, one image stays under 1 GB peak."""

ENV = "XRAYAGE_MEMORY_BUDGET_MB"

_budget: int | None = None


def memory_budget() -> int:
    """The budget in bytes: :func:`set_memory_budget`, else ``$XRAYAGE_MEMORY_BUDGET_MB``,
    else :data:`DEFAULT_MEMORY_BUDGET`."""
    if _budget is not None:
        return _budget
    text = os.environ.get(ENV, "").strip()
    try:
        return int(float(text) * (1 << 20)) if text else DEFAULT_MEMORY_BUDGET
    except ValueError:
        return DEFAULT_MEMORY_BUDGET


def set_memory_budget(n_bytes: int | None) -> None:
    """Set the process-wide budget (None: back to the environment or the default)."""
    global _budget
    if n_bytes is not None and n_bytes < 1 << 20:
        raise ValueError("a memory budget below 1 MiB cannot decode any radiograph")
    _budget = n_bytes


def bytes_per_pixel(kind: str, bytes_per_sample: int, samples: int = 1) -> int:
    """Peak bytes per pixel of reading one image (see the module table).

    Examples
    --------
    >>> bytes_per_pixel("dicom", 2), bytes_per_pixel("raster", 1), bytes_per_pixel("raster", 2)
    (34, 8, 8)
    """
    if samples >= 3:
        return 40
    if kind == "dicom":
        return 30 + 2 * bytes_per_sample
    return 8


def decode_estimate(rows: int, cols: int, kind: str, bytes_per_sample: int,
                    samples: int = 1) -> int:
    """Estimated peak bytes of reading a ``rows x cols`` image."""
    return rows * cols * bytes_per_pixel(kind, bytes_per_sample, samples)


def check_budget(name: str, rows: int, cols: int, kind: str, bytes_per_sample: int,
                 samples: int = 1) -> None:
    """Raise :class:`ImageTooLargeError` when the estimate exceeds the budget."""
    need, budget = decode_estimate(rows, cols, kind, bytes_per_sample, samples), memory_budget()
    if need > budget:
        raise ImageTooLargeError(
            f"{name}: {rows}x{cols} pixels need about {need / 2**20:,.0f} MiB to decode, over "
            f"the memory budget of {budget / 2**20:,.0f} MiB (raise it with "
            f"{ENV} or --memory-budget-mb if the image is genuine)")


def max_decode_side(kind: str = "raster", bytes_per_sample: int = 2, samples: int = 1) -> int:
    """The largest square side the budget accepts for one kind of image."""
    return int((memory_budget() / bytes_per_pixel(kind, bytes_per_sample, samples)) ** 0.5)




def fit_raster(image: Any, name: str) -> int:
    """Make a PIL image fit the budget before it is decoded; return the scale (1 = full).

    A JPEG over the budget is set to decode at 1/2, 1/4 or 1/8 scale (``draft``); any
    other image over it raises :class:`ImageTooLargeError`.
    """
    width, height = image.size
    bands = len(image.getbands())
    mode = str(image.mode)
    bps = 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1
    budget = memory_budget()
    if decode_estimate(height, width, "raster", bps, bands) <= budget:
        return 1
    if image.format == "JPEG":
        for scale in (2, 4, 8):
            w, h = -(-width // scale), -(-height // scale)
            if decode_estimate(h, w, "raster", bps, bands) <= budget:
                image.draft(mode, (w, h))
                return scale
    check_budget(name, height, width, "raster", bps, bands)
    return 1  # pragma: no cover - check_budget raised


__all__ = ["DEFAULT_MEMORY_BUDGET", "ENV", "bytes_per_pixel", "check_budget",
           "decode_estimate", "fit_raster", "max_decode_side", "memory_budget",
           "set_memory_budget"]
