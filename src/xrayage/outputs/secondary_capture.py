"""DICOM Secondary Capture: the radiograph with its heat map and the result burned in.

Any PACS viewer can show it. The image is what the model saw (the radiograph made
square as the model card says, at most 1024 px) with the class activation map
blended on top, above a text band with the X-ray age, its interval, the gaps, the
model and "NOT FOR DIAGNOSTIC USE". It is an RGB Secondary Capture Image derived
from the source, in the source's study and a new series.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..card import ModelCard, PreprocessSpec
from ..estimate import AgeEstimate
from ..explain import LEGEND, colour_bar, overlay
from ..extras import require
from ..preprocess import square
from ._common import (
    DISCLAIMER,
    MANUFACTURER,
    coverage,
    fix_patient_age,
    model_label,
    quiet_person_names,
    require_age,
    require_dicom,
    require_radiograph,
    software_label,
)

if TYPE_CHECKING:
    import highdicom as hd

FEATURE = "DICOM Secondary Capture"

SC_SERIES_NUMBER = 9902
"""Series number of the Secondary Capture series (a new series in the source study)."""

MAX_SIDE = 1024
"""Largest side of the image part, in pixels."""

_WHITE, _GRAY, _WARN = (255, 255, 255), (190, 190, 190), (255, 196, 0)


def render_summary_image(estimate: AgeEstimate, card: ModelCard, *,
                         max_side: int = MAX_SIDE) -> Image.Image:
    """Return the RGB presentation image: overlay (or plain image) above a text band.

    Parameters
    ----------
    estimate : AgeEstimate
        With an X-ray age and the radiograph kept; the heat map is used if present.
    card : ModelCard
    max_side : int
        Largest side of the image part, in pixels.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``; width = image side, height = image side + text band.
    """
    require_age(estimate, FEATURE)
    rg = require_radiograph(estimate, FEATURE)
    picture = (overlay(rg.pixels, estimate.heatmap, card.preprocessing, max_side=max_side)
               if estimate.heatmap is not None
               else _gray_square(rg.pixels, card.preprocessing, max_side))
    side = picture.width
    heat = estimate.heatmap is not None
    lines = summary_lines(estimate, card, heatmap=heat)
    size = max(12, side // 40)
    pad = size // 2
    bar_width = 5 * size if heat else 0
    rows: list[tuple[str, int, tuple[int, int, int], int, bool]] = []
    for i, line in enumerate(lines):  # (text, font size, colour, indent, colour bar before)
        font_size = round(size * 1.35) if i == 0 else size
        colour = _WARN if i == len(lines) - 1 else (_WHITE if i < 2 else _GRAY)
        indent = bar_width + pad if heat and line == LEGEND else 0
        font = ImageFont.load_default(size=font_size)
        for k, part in enumerate(wrap_text(line, font, side - 2 * pad - indent)):
            rows.append((part, font_size, colour, indent, bool(indent) and k == 0))
    band = pad * 2 + sum(round(r[1] * 1.3) for r in rows)
    canvas = Image.new("RGB", (side, side + band), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = side + pad
    for text, font_size, colour, indent, bar in rows:
        if bar:  # the overlay's colour scale, dark to bright, beside its caption
            canvas.paste(colour_bar(bar_width, max(4, round(font_size * 0.8))),
                         (pad, y + round(font_size * 0.15)))
        draw.text((pad + indent, y), text, fill=colour,
                  font=ImageFont.load_default(size=font_size))
        y += round(font_size * 1.3)
    return canvas


def wrap_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
              width: int) -> list[str]:
    """Split `text` at spaces into lines no wider than `width` pixels in `font`.

    A single word wider than `width` is split between characters.

    Parameters
    ----------
    text : str
    font : PIL font
    width : int
        In pixels.

    Returns
    -------
    list of str
    """
    out: list[str] = []
    current = ""
    words: list[str] = []
    for word in text.split(" "):
        while len(word) > 1 and font.getlength(word) > width:
            cut = max(1, max(k for k in range(1, len(word) + 1)
                             if k == 1 or font.getlength(word[:k]) <= width))
            words.append(word[:cut])
            word = word[cut:]
        words.append(word)
    for word in words:
        candidate = word if not current else f"{current} {word}"
        if current and font.getlength(candidate) > width:
            out.append(current)
            current = word
        else:
            current = candidate
    out.append(current)
    return [line.strip() for line in out if line.strip()] or [""]


def summary_lines(estimate: AgeEstimate, card: ModelCard, *, heatmap: bool = True) -> list[str]:
    """The text lines of the band (ASCII only, so every viewer font shows them).

    The image wraps each line to its width: nothing is cut off.
    """
    age = require_age(estimate, FEATURE)
    first = f"X-ray age {age:.1f} y"
    if estimate.age_interval_lower is not None and estimate.age_interval_upper is not None:
        cov = coverage(card)
        first += (f"   ({'' if cov is None else f'{cov:.0%} '}interval for chronological age "
                  f"{estimate.age_interval_lower:.1f} - {estimate.age_interval_upper:.1f} y)")
    second = ("Chronological age unknown: no gap" if estimate.age_years is None
              else f"Chronological age {estimate.age_years:.1f} y   "
                   f"Gap {_signed(estimate.age_gap)} y")
    if estimate.age_gap_corrected is not None:
        second += f"   Corrected gap {_signed(estimate.age_gap_corrected)} y"
    third = f"Model {model_label(card)} ({software_label()})"
    if estimate.qc_status != "ok":
        third += f"   QC {estimate.qc_status}: {', '.join(estimate.qc_reasons)}"
    lines = [first, second, third]
    if heatmap:
        lines.append(LEGEND)
    return [*lines, DISCLAIMER]


def to_secondary_capture(estimate: AgeEstimate, card: ModelCard, *,
                         series_number: int = SC_SERIES_NUMBER,
                         max_side: int = MAX_SIDE) -> hd.sc.SCImage:
    """Build the Secondary Capture Image of one estimate.

    Parameters
    ----------
    estimate : AgeEstimate
        With an X-ray age and the DICOM radiograph kept (and ideally the heat map:
        ``predict_many(..., heatmap=True, keep_radiograph=True)``).
    card : ModelCard
    series_number : int
        Series Number of the new series.
    max_side : int
        Largest side of the image part, in pixels.

    Returns
    -------
    highdicom.sc.SCImage
        RGB, 8 bit, uncompressed; patient and study copied from the source;
        Source Image Sequence references the radiograph; Burned In Annotation YES.

    Raises
    ------
    ClinicalOutputError
        No X-ray age, or the source is not DICOM.
    MissingExtraError
        highdicom is not installed.
    """
    hd = require("highdicom", "clinical", FEATURE)
    source = require_dicom(estimate, FEATURE)
    pixels = np.asarray(render_summary_image(estimate, card, max_side=max_side))
    orientation = _orientation(source)
    with quiet_person_names():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=orientation or ("L", "F"),
            transfer_syntax_uid="1.2.840.10008.1.2.1")
    if orientation is None:
        sc.PatientOrientation = ""  # Type 2: unknown in the source, so left empty
    if source.get("BodyPartExamined"):
        # The chest is unpaired: Laterality (Type 2C) must then be absent.
        sc.BodyPartExamined = source.BodyPartExamined
    elif "Laterality" not in sc:
        sc.Laterality = ""  # body part unknown: laterality unknown (empty)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "X-ray age overlay (not for diagnostic use)"
    sc.DerivationDescription = (
        f"Class activation map of {model_label(card)} blended on the radiograph, "
        "with the X-ray age burned in")
    sc.SoftwareVersions = software_label()
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    fix_patient_age(sc, source)
    return sc


def write_secondary_capture(estimate: AgeEstimate, card: ModelCard, path: str | Path,
                            **kwargs: Any) -> Path:
    """Write :func:`to_secondary_capture` as a DICOM Part 10 file and return its path."""
    path = Path(path)
    to_secondary_capture(estimate, card, **kwargs).save_as(path, enforce_file_format=True)
    return path


def _gray_square(pixels: np.ndarray, spec: PreprocessSpec, max_side: int) -> Image.Image:
    base = square(np.asarray(pixels, dtype=np.float32), spec.square)
    image = Image.fromarray(np.round(np.clip(base, 0, 1) * 255).astype(np.uint8), mode="L")
    if image.width > max_side:
        image = image.resize((max_side, max_side), Image.Resampling.BILINEAR)
    return image.convert("RGB")


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation if it is a valid biped pair, else None."""
    from highdicom.enum import PatientOrientationValuesBiped

    value = source.get("PatientOrientation")
    if value is None or len(value) != 2:
        return None
    try:
        row, col = (PatientOrientationValuesBiped(str(v)).value for v in value)
    except ValueError:
        return None
    return row, col


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"
