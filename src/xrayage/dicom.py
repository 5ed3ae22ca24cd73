"""DICOM decoding: header checks, Modality LUT, VOI LUT or window, MONOCHROME1, age.

The display pipeline follows DICOM PS3.3 C.11: stored values -> Modality LUT
(rescale) -> VOI LUT or window -> Presentation (MONOCHROME1 is inverted). Where the
header carries no VOI transform, 8-bit data keeps its full range (it is already
display-ready) and deeper data gets a robust percentile window, because raw
detector data rarely fills its stored range.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import re
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from .errors import ImageTooLargeError, XRayAgeInputError
from .memory import check_budget
from .radiograph import LUMA, Radiograph, colour_fraction

logger = logging.getLogger(__name__)

PERCENTILE_WINDOW = (0.5, 99.5)
"""Percentiles of the modality values used when the header has no VOI transform."""

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([YMWD]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"Y": 365.25, "M": 365.25 / 12.0, "W": 7.0, "D": 1.0}


def is_dicom(data: bytes) -> bool:
    """Return True if `data` starts like a DICOM Part 10 file (``DICM`` at byte 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def parse_patient_age(value: str | None) -> float | None:
    """Parse a DICOM PatientAge (AS) string into years.

    Accepts the standard ``nnnY``, ``nnnM``, ``nnnW`` and ``nnnD`` and the common
    non-standard bare number (``"62"``, read as years).

    Examples
    --------
    >>> parse_patient_age("062Y"), parse_patient_age("62"), parse_patient_age("006M")
    (62.0, 62.0, 0.5)
    >>> parse_patient_age("unknown") is None
    True
    """
    if not value:
        return None
    match = _AGE_RE.match(str(value))
    if match is None:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    return number * _DAYS_PER_UNIT[unit] / 365.25


def _parse_date(value: Any) -> _dt.date | None:
    text = str(value or "").strip()[:8]
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def age_from_dates(birth: Any, acquired: Any) -> float | None:
    """Return the age in years between two DA strings, or None if either is unusable.

    Examples
    --------
    >>> round(age_from_dates("19400305", "20040826"), 2)
    64.48
    """
    born, seen = _parse_date(birth), _parse_date(acquired)
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / 365.25


def dicom_age(ds: Dataset) -> float | None:
    """Chronological age from PatientAge, else PatientBirthDate and the study date."""
    age = parse_patient_age(ds.get("PatientAge"))
    if age is not None:
        return age
    for tag in ("StudyDate", "AcquisitionDate", "SeriesDate", "ContentDate"):
        age = age_from_dates(ds.get("PatientBirthDate"), ds.get(tag))
        if age is not None:
            return age
    return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip().upper()
    return text or None


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Apply a VOI window (PS3.3 C.11.2.1.2), returning values in [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        lo = center - width / 2.0
        return np.clip((values - lo) / width, 0.0, 1.0)
    lo = center - 0.5 - (width - 1.0) / 2.0
    return np.clip((values - lo) / max(width - 1.0, 1e-6), 0.0, 1.0)


def _first_number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
    except (TypeError, ValueError, IndexError):
        return None


def to_display(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Map stored grayscale values to display values in [0, 1], bone bright.

    Parameters
    ----------
    stored : numpy.ndarray
        One frame of stored values, shape (rows, columns).
    ds : pydicom.Dataset
        The header with the Modality LUT, VOI LUT and Image Pixel modules.

    Returns
    -------
    numpy.ndarray
        float32 (rows, columns) in [0, 1].
    """
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        out = np.asarray(apply_voi(values, ds, index=0), dtype=np.float64)
        display = out / float(2**bits - 1)
    else:
        center = _first_number(ds.get("WindowCenter"))
        width = _first_number(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1.0:
            function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
            display = _window(values, center, width, function)
        elif _bits_stored(ds) <= 8:
            # 8-bit data without a VOI transform is already display-ready: keep its range.
            ends = apply_modality_lut(np.array([0, 2 ** _bits_stored(ds) - 1]), ds)
            lo, hi = float(np.min(ends)), float(np.max(ends))
            display = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        else:
            lo, hi = np.percentile(values, PERCENTILE_WINDOW)
            display = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        display = 1.0 - display
    return np.clip(display, 0.0, 1.0).astype(np.float32)


def _check_header(ds: Dataset, name: str, max_pixels: int) -> tuple[int, int, int, int]:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise XRayAgeInputError(f"{name}: DICOM has no pixel data (not an image object)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise XRayAgeInputError(f"{name}: DICOM image header is incomplete ({exc})") from exc
    if rows < 1 or cols < 1 or frames < 1 or samples not in (1, 3):
        raise XRayAgeInputError(
            f"{name}: invalid DICOM geometry {rows}x{cols}, {frames} frames, {samples} samples"
        )
    if rows * cols * samples > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {rows}x{cols} pixels exceeds the limit of {max_pixels:,} "
            "(raise max_pixels if the image is genuine)"
        )
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    if not 1 <= bits <= 32:
        raise XRayAgeInputError(f"{name}: unsupported BitsStored {bits}")
    allocated = int(ds.get("BitsAllocated") or bits)
    check_budget(name, rows, cols, "dicom", max(1, (allocated + 7) // 8), samples)
    return rows, cols, frames, samples


def read_dicom(data: bytes, name: str, max_pixels: int) -> Radiograph:
    """Decode DICOM bytes into a :class:`Radiograph` (first frame only).

    Raises
    ------
    XRayAgeInputError
        If the file is not DICOM, is malformed, has no or undecodable pixel data,
        or is too large.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read_dicom(data, name, max_pixels)
    except XRayAgeInputError:
        raise
    except Exception as exc:
        # pydicom parses lazily, so a hostile file can fail anywhere, with any error
        # class. Only the class name is reported: messages may quote header values.
        raise XRayAgeInputError(f"{name}: malformed DICOM ({type(exc).__name__})") from exc


def _read_dicom(data: bytes, name: str, max_pixels: int) -> Radiograph:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=not is_dicom(data))
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        OverflowError,
        MemoryError,
        NotImplementedError,
    ) as exc:
        raise XRayAgeInputError(
            f"{name}: not a readable DICOM file ({type(exc).__name__})"
        ) from exc
    # pydicom stops quietly (a warning, an empty data set) where the bytes end early
    ended_early = any("End of file" in str(w.message) for w in caught)
    if ended_early or (len(ds) == 0 and is_dicom(data)):
        raise XRayAgeInputError(f"{name}: truncated or corrupt DICOM file (the data ends "
                                f"before the image is complete; {len(data)} bytes)")
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise XRayAgeInputError(f"{name}: not a DICOM image (no SOP class, no image module)")
    rows, cols, frames, samples = _check_header(ds, name, max_pixels)
    try:
        arr = ds.pixel_array if frames == 1 else pydicom.pixels.pixel_array(ds, index=0)
        arr = np.asarray(arr)
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        if _native_pixels_short(ds, rows * cols * frames * samples):
            raise XRayAgeInputError(
                f"{name}: truncated or corrupt DICOM file (the pixel data is shorter than "
                f"{rows} x {cols} pixels need; {len(data)} bytes)") from exc
        raise XRayAgeInputError(
            f"{name}: DICOM pixel data cannot be decoded "
            f"(transfer syntax {getattr(ds.file_meta, 'TransferSyntaxUID', '?')}: "
            f"{type(exc).__name__})"
        ) from exc
    arr = _mask_bits(arr, ds)
    expected = (rows, cols, 3) if samples == 3 else (rows, cols)
    if arr.shape != expected:
        raise XRayAgeInputError(f"{name}: decoded shape {arr.shape} does not match {expected}")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if samples == 3:
            # pydicom converts YBR to RGB on decode; keep luminance, as for RGB PNG.
            rgb = arr.astype(np.float64) / float(2 ** int(ds.BitsStored) - 1)
            pixels = np.clip(rgb @ LUMA, 0.0, 1.0).astype(np.float32)
            colour = colour_fraction(rgb)
        else:
            pixels, colour = to_display(arr, ds), 0.0
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise XRayAgeInputError(f"{name}: invalid DICOM LUT or window ({exc})") from exc

    header = ds.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    sex = _text(ds, "PatientSex")
    return Radiograph(
        pixels=pixels,
        age_years=dicom_age(ds),
        sex=sex if sex in ("M", "F", "O") else None,
        view_position=_text(ds, "ViewPosition"),
        modality=_text(ds, "Modality"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        photometric_interpretation=photometric,
        bits_stored=int(ds.get("BitsStored") or 8),
        pixel_spacing_mm=_spacing(ds),
        source_format="dicom",
        number_of_frames=frames,
        samples_per_pixel=samples,
        colour_fraction=colour,
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        name=name,
        dataset=header,
    )


def _native_pixels_short(ds: Dataset, values: int) -> bool:
    """Whether uncompressed pixel data holds fewer bytes than `values` pixels need."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or getattr(syntax, "is_compressed", True) or "PixelData" not in ds:
        return False
    bits = int(ds.get("BitsAllocated") or 16)
    return len(ds.PixelData) < values * bits // 8


def _bits_stored(ds: Dataset) -> int:
    return int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)


def _mask_bits(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Clear bits above BitsStored in unsigned data (overlays or junk in the high bits)."""
    stored, allocated = int(ds.get("BitsStored") or 0), int(ds.get("BitsAllocated") or 0)
    if arr.dtype.kind == "u" and 0 < stored < allocated:
        return arr & np.asarray(2**stored - 1, dtype=arr.dtype)
    return arr


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value else None
