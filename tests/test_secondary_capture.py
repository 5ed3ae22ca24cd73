"""DICOM Secondary Capture: heat map and result burned in, validated by dciodvfy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from xrayage import AgeEstimate, XRayAge
from xrayage.outputs import (
    ClinicalOutputError,
    render_summary_image,
    to_secondary_capture,
    write_secondary_capture,
)
from xrayage.outputs.secondary_capture import summary_lines

from .clinical_helpers import dciodvfy, png_bytes, predict_kept


@pytest.mark.data
def test_sc_validates_and_references_source(estimate: AgeEstimate, estimator: XRayAge,
                                            tmp_path: Path) -> None:
    path = write_secondary_capture(estimate, estimator.card, tmp_path / "x.sc.dcm")
    errors, _warnings = dciodvfy(path)
    assert errors == []
    sc = pydicom.dcmread(path)
    source = pydicom.dcmread(estimate.path, stop_before_pixels=True)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SOPInstanceUID != source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.PatientID == source.PatientID and sc.PatientName == source.PatientName
    assert sc.BurnedInAnnotation == "YES" and list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3


@pytest.mark.data
def test_sc_pixels_are_the_rendered_summary(estimate: AgeEstimate, estimator: XRayAge) -> None:
    sc = to_secondary_capture(estimate, estimator.card)
    expected = np.asarray(render_summary_image(estimate, estimator.card))
    np.testing.assert_array_equal(sc.pixel_array, expected)
    side = min(estimate.radiograph.rows, estimate.radiograph.columns, 1024)
    assert sc.Columns == side and sc.Rows > side  # image above the text band
    band = expected[side:]
    assert band.max() > 200  # text was drawn
    image = expected[:side]
    assert np.ptp(image[..., 0].astype(int) - image[..., 2].astype(int)) > 50  # coloured map


@pytest.mark.data
def test_summary_lines_hold_the_result(estimate: AgeEstimate, estimator: XRayAge) -> None:
    lines = summary_lines(estimate, estimator.card)
    text = "\n".join(lines)
    assert f"X-ray age {estimate.xray_age:.1f} y" in lines[0]
    assert (f"90% interval for chronological age {estimate.age_interval_lower:.1f} - "
            f"{estimate.age_interval_upper:.1f} y") in text
    assert f"Gap {estimate.age_gap:+.1f} y" in text
    assert f"Corrected gap {estimate.age_gap_corrected:+.1f} y" in text
    assert "Model tiny-test 0" in text and lines[-1].startswith("NOT FOR DIAGNOSTIC USE")
    assert text.isascii()


@pytest.mark.data
def test_without_heatmap_shows_the_plain_image(estimate: AgeEstimate,
                                               estimator: XRayAge) -> None:
    plain = np.asarray(render_summary_image(replace(estimate, heatmap=None), estimator.card))
    side = plain.shape[1]
    assert np.array_equal(plain[:side, :, 0], plain[:side, :, 2])  # gray


def test_png_input_is_refused(estimator: XRayAge) -> None:
    est = predict_kept(estimator, png_bytes(), name="chest.png")
    with pytest.raises(ClinicalOutputError, match=r"chest\.png: no DICOM Secondary Capture"):
        to_secondary_capture(est, estimator.card)
    assert render_summary_image(est, estimator.card).mode == "RGB"  # the image itself works


@pytest.mark.data
@pytest.mark.parametrize("max_side", [256, 1024])
def test_the_text_band_is_wrapped_never_cut(estimate: AgeEstimate, estimator: XRayAge,
                                            max_side: int) -> None:
    """A long model name wraps onto more lines; no text reaches the right edge."""
    card = replace(estimator.card, name="a-model-with-a-rather-long-name-for-the-band",
                   version="2026.12.01-build-with-a-long-version")
    est = estimate
    image = np.asarray(render_summary_image(est, card, max_side=max_side))
    side = image.shape[1]
    pad = max(12, side // 40) // 2
    band = image[side:]
    assert band[:, -pad:].max() == 0  # the right margin stays black: nothing cut off
    lines = summary_lines(est, card)
    assert any("Heat map" in line for line in lines)
    # the legend's colour bar is drawn: dark to bright along one row of the band
    bar_rows = [row for row in band if np.ptp(row[: 5 * pad, 0].astype(int)) > 150]
    assert bar_rows


def test_wrap_text_fits_the_width() -> None:
    from PIL import ImageFont

    from xrayage.outputs.secondary_capture import wrap_text

    font = ImageFont.load_default(size=20)
    text = "Model xrayage-default 0.3 (xrayage 0.2.0)   Heat map: contribution, bright = most"
    lines = wrap_text(text, font, 200)
    assert len(lines) > 1 and " ".join(lines).split() == text.split()
    assert all(font.getlength(line) <= 200 for line in lines)
    assert all(font.getlength(part) <= 50 for part in wrap_text("x" * 40, font, 50))
