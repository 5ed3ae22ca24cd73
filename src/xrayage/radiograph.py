"""The :class:`Radiograph`: decoded pixels plus the header fields xrayage uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 luma weights used to turn colour sources into gray."""


def colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels whose channels differ by more than 10% of full scale.

    Gray images stored as RGB give 0; burned-in coloured arrows or labels do not.
    """
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float(np.mean(spread > 0.1))


@dataclass(frozen=True, repr=False)
class Radiograph:
    """A decoded radiograph in display orientation.

    Attributes
    ----------
    pixels : numpy.ndarray
        float32, shape (rows, columns), values in [0, 1], bone bright
        (MONOCHROME2 convention), after the Modality and VOI LUTs.
    age_years : float or None
        Chronological age at acquisition, from the header (or a manifest).
    sex : {'M', 'F', 'O'} or None
    view_position : str or None
        DICOM ViewPosition as written (``PA``, ``AP``, ``LL``, ...), upper case.
    modality, body_part_examined : str or None
        DICOM Modality and BodyPartExamined, upper case.
    photometric_interpretation : str
        As stored (``MONOCHROME1``, ``MONOCHROME2``, ``RGB``, ...).
    bits_stored : int
        Bits per sample in the source (8 for 8-bit PNG/JPEG).
    pixel_spacing_mm : tuple of float or None
        (row, column) spacing in mm, from PixelSpacing or ImagerPixelSpacing.
    source_format : str
        ``dicom``, ``png``, ``jpeg``, ...
    number_of_frames : int
        Frames in the source; only the first is decoded.
    samples_per_pixel : int
        3 for colour sources (converted to luminance), else 1.
    colour_fraction : float
        Share of pixels that are visibly coloured (annotations, photos).
    study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid : str or None
        DICOM identifiers needed to reference the source image.
    name : str
        A short label for messages (the file name, never a patient identifier).
    dataset : pydicom.Dataset or None
        The DICOM header without pixel data, for outputs that copy the patient
        and study modules. Not shown in ``repr``.
    """

    pixels: np.ndarray
    age_years: float | None = None
    sex: str | None = None
    view_position: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    photometric_interpretation: str = "MONOCHROME2"
    bits_stored: int = 8
    pixel_spacing_mm: tuple[float, float] | None = None
    source_format: str = "array"
    number_of_frames: int = 1
    samples_per_pixel: int = 1
    colour_fraction: float = 0.0
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    name: str = "<array>"
    dataset: Any = field(default=None, compare=False)

    @property
    def rows(self) -> int:
        """Number of pixel rows."""
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        """Number of pixel columns."""
        return int(self.pixels.shape[1])

    def metadata(self) -> dict[str, Any]:
        """Return the header fields as a JSON-ready dict (no pixels, no identifiers)."""
        return {
            "age_years": None if self.age_years is None else round(self.age_years, 3),
            "sex": self.sex,
            "view": self.view_position,
            "modality": self.modality,
            "body_part": self.body_part_examined,
            "photometric": self.photometric_interpretation,
            "bits_stored": self.bits_stored,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "source_format": self.source_format,
            "number_of_frames": self.number_of_frames,
            "samples_per_pixel": self.samples_per_pixel,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
        }

    def to_uint8(self) -> np.ndarray:
        """Return the pixels as an 8-bit (rows, columns) array for display."""
        return np.round(np.clip(self.pixels, 0.0, 1.0) * 255.0).astype(np.uint8)

    def __repr__(self) -> str:
        return (
            f"Radiograph({self.name!r}, {self.rows}x{self.columns}, {self.source_format}, "
            f"age={self.age_years}, sex={self.sex}, view={self.view_position})"
        )
