"""Read a radiograph from DICOM, PNG or JPEG (path, bytes or file object).

The format is found from the content, never from the file name. Every failure
raises :class:`~xrayage.errors.XRayAgeInputError` with a one-line message naming
the file and the cause.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicom import is_dicom, read_dicom
from .errors import ImageTooLargeError, UnsupportedFormatError, XRayAgeInputError
from .memory import fit_raster
from .radiograph import LUMA, Radiograph, colour_fraction

DEFAULT_MAX_PIXELS = 80_000_000
"""Largest image (rows x columns x samples) decoded by default: about 9000 x 9000."""

DEFAULT_MAX_BYTES = 1 << 30
"""Largest file read by default (1 GiB)."""

Source = str | os.PathLike[str] | bytes | bytearray | BinaryIO


def read_radiograph(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Radiograph:
    """Read one radiograph into display-ready pixels and header metadata.

    Parameters
    ----------
    source : path, bytes or binary file object
        A DICOM Part 10 file (any transfer syntax pydicom and pylibjpeg decode),
        or a PNG/JPEG (8 or 16 bit, gray, RGB or RGBA; EXIF orientation applied). A 16-bit
        PNG is scaled by its effective bit depth (10-, 12- or 14-bit data read as such).
    max_pixels : int
        Refuse, before decoding, an image with more pixels than this.
    max_bytes : int
        Refuse a file larger than this.
    name : str, optional
        Label used in messages; defaults to the file name.

    Returns
    -------
    Radiograph
        float32 pixels in [0, 1], bone bright, plus metadata.

    Raises
    ------
    XRayAgeInputError
        For anything that is not a decodable radiograph (subclasses:
        :class:`~xrayage.errors.ImageTooLargeError`,
        :class:`~xrayage.errors.UnsupportedFormatError`).

    Examples
    --------
    >>> import numpy as np, io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.fromarray(np.full((300, 300), 128, np.uint8)).save(buf, "PNG")
    >>> read_radiograph(buf.getvalue()).pixels.shape
    (300, 300)
    """
    data, label = _read_bytes(source, max_bytes, name)
    if not data:
        raise XRayAgeInputError(f"{label}: empty file")
    if is_dicom(data):
        return read_dicom(data, label, max_pixels)
    try:
        return _read_raster(data, label, max_pixels)
    except UnsupportedFormatError:
        if _looks_like_raw_dicom(data):
            return read_dicom(data, label, max_pixels)
        raise


def _read_bytes(source: Source, max_bytes: int, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        label = name or "<bytes>"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        label = name or path.name
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise XRayAgeInputError(f"{label}: file of {size:,} bytes exceeds {max_bytes:,}")
            data = path.read_bytes()
        except IsADirectoryError as exc:
            raise XRayAgeInputError(f"{label}: is a directory, not a file") from exc
        except FileNotFoundError as exc:
            raise XRayAgeInputError(f"{label}: no such file") from exc
        except OSError as exc:
            raise XRayAgeInputError(f"{label}: cannot be read ({exc.strerror})") from exc
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        label = name or str(getattr(source, "name", "<stream>"))
    else:
        raise TypeError(f"read_radiograph() takes a path, bytes or file, not {type(source)!r}")
    if len(data) > max_bytes:
        raise XRayAgeInputError(f"{label}: more than {max_bytes:,} bytes")
    return data, label


def _looks_like_raw_dicom(data: bytes) -> bool:
    """A DICOM dataset without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00")


def _read_raster(data: bytes, name: str, max_pixels: int) -> Radiograph:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            bands = len(image.getbands())
            if width * height * bands > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: {height}x{width} pixels exceeds the limit of {max_pixels:,} "
                    "(raise max_pixels if the image is genuine)"
                )
            fit_raster(image, name)  # memory budget: a JPEG decodes at reduced scale
            frames = int(getattr(image, "n_frames", 1))
            fmt = (image.format or "image").lower()
            image.load()
            # In place: without an orientation tag this is a no-op, not a copy.
            ImageOps.exif_transpose(image, in_place=True)
            pixels, bits, samples, colour = _raster_pixels(image)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(
            f"{name}: not a DICOM, PNG or JPEG image ({type(exc).__name__})"
        ) from exc
    except (
        OSError,
        ValueError,
        SyntaxError,
        TypeError,
        IndexError,
        KeyError,
        EOFError,
        MemoryError,
        ZeroDivisionError,
        struct.error,
    ) as exc:
        raise XRayAgeInputError(f"{name}: corrupt {_format_name(data)} image ({exc})") from exc
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise XRayAgeInputError(f"{name}: decoded to an empty image")
    return Radiograph(
        pixels=pixels,
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        bits_stored=bits,
        source_format="jpeg" if fmt == "mpo" else fmt,
        number_of_frames=frames,
        samples_per_pixel=samples,
        colour_fraction=colour,
        name=name,
    )


def _format_name(data: bytes) -> str:
    """Guess a format name from magic bytes, for error messages."""
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "image"


def _raster_pixels(image: Image.Image) -> tuple[np.ndarray, int, int, float]:
    """Convert a PIL image to float32 luminance in [0, 1].

    Returns the pixels, the source bit depth, the samples per pixel and the
    :func:`colour_fraction`.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Scale by the effective bit depth, the fewest bits (at least 8) that hold the
        # maximum: 12-bit detector data in a 16-bit PNG reads as 12-bit, not as a nearly
        # black 16-bit image.
        raw = np.asarray(image)
        bits = max(8, int(np.ceil(np.log2(float(raw.max(initial=0)) + 1.0))))
        if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
            # Exact in float32: the division of two exact float32 operands, correctly
            # rounded, equals the float64 quotient rounded to float32, and stays in [0, 1].
            out = raw.astype(np.float32)
            out /= np.float32(2.0**bits - 1)
            return out, bits, 1, 0.0
        arr = raw.astype(np.float64)
        return np.clip(arr / (2.0**bits - 1), 0, 1).astype(np.float32), bits, 1, 0.0
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        arr = np.nan_to_num((arr - lo) / max(hi - lo, 1e-12))
        return arr.astype(np.float32), 32, 1, 0.0
    if mode in ("L", "LA", "1"):
        gray = (image if mode == "L" else image.getchannel(0) if mode == "LA"
                else image.convert("L"))
        # One float32 buffer divided in place: the values of astype(float32) / 255.0,
        # without a second full-size temporary.
        out = np.asarray(gray).astype(np.float32)
        out /= np.float32(255.0)
        return out, 8, 1, 0.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return (rgb @ LUMA).astype(np.float32), 8, 3, colour_fraction(rgb)
