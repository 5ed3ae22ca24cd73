"""DICOM reading: real fixtures, every encodable transfer syntax, LUTs, and bad files."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from xrayage.dicom import age_from_dates, parse_patient_age
from xrayage.errors import ImageTooLargeError, XRayAgeInputError
from xrayage.io import read_radiograph
from xrayage.quality import check_quality

from .dicom_factory import chest_phantom, make_dataset, to_bytes
from .shared import NEMA, SIIM, SIIM_MONO1


def lung_vs_mediastinum(pixels: np.ndarray) -> tuple[float, float]:
    """Mean of the left-lung and central (spine/mediastinum) regions of a PA chest."""
    rows, cols = pixels.shape
    band = slice(int(rows * 0.3), int(rows * 0.6))
    lung = pixels[band, int(cols * 0.2) : int(cols * 0.35)].mean()
    centre = pixels[band, int(cols * 0.46) : int(cols * 0.54)].mean()
    return float(lung), float(centre)


@pytest.mark.data
class TestRealFixtures:
    def test_nema_jpeg2000_monochrome1(self) -> None:
        rg = read_radiograph(NEMA)
        assert rg.age_years == pytest.approx(64.5, abs=0.1)
        assert (rg.sex, rg.view_position, rg.modality) == ("F", "PA", "CR")
        assert rg.photometric_interpretation == "MONOCHROME1"
        assert rg.bits_stored == 15
        assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (1955, 1841)
        assert rg.pixels.min() >= 0.0 and rg.pixels.max() <= 1.0
        lung, centre = lung_vs_mediastinum(rg.pixels)
        assert centre > lung + 0.1, "MONOCHROME1 not inverted: lungs should be dark"
        assert rg.study_instance_uid and rg.sop_instance_uid and rg.sop_class_uid
        assert check_quality(rg).accepted

    def test_monochrome1_is_inverse(self) -> None:
        normal, inverted = read_radiograph(SIIM), read_radiograph(SIIM_MONO1)
        assert inverted.photometric_interpretation == "MONOCHROME1"
        assert np.abs((1.0 - inverted.pixels) - normal.pixels).mean() < 0.01

    def test_bare_patient_age(self) -> None:
        rg = read_radiograph(SIIM)
        assert rg.age_years == 62.0
        assert rg.pixel_spacing_mm == pytest.approx((0.168, 0.168))
        assert rg.dataset is not None and "PixelData" not in rg.dataset


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("062Y", 62.0),
        ("62", 62.0),
        ("62Y", 62.0),
        ("006M", 0.5),
        ("052W", 52 * 7 / 365.25),
        ("030D", 30 / 365.25),
        (" 45 ", 45.0),
        ("", None),
        ("abc", None),
        ("1234Y", None),
        (None, None),
    ],
)
def test_parse_patient_age(text: str | None, years: float | None) -> None:
    assert parse_patient_age(text) == (pytest.approx(years) if years is not None else None)


def test_age_from_birth_date_when_patient_age_missing() -> None:
    ds = make_dataset(PatientAge=None, PatientBirthDate="19500101", StudyDate="20200101")
    assert read_radiograph(to_bytes(ds)).age_years == pytest.approx(70.0, abs=0.01)
    ds = make_dataset(
        PatientAge=None, PatientBirthDate="19500101", StudyDate=None, AcquisitionDate="20000101"
    )
    assert read_radiograph(to_bytes(ds)).age_years == pytest.approx(50.0, abs=0.01)
    assert age_from_dates("20200101", "19500101") is None
    assert age_from_dates("2020-13-45", "20200101") is None


LOSSLESS = [RLELossless, JPEGLSLossless, JPEG2000Lossless]


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda u: u.name)
def test_lossless_transfer_syntaxes_match_uncompressed(syntax: str) -> None:
    pixels = chest_phantom()
    ref = read_radiograph(to_bytes(make_dataset(pixels)))
    rg = read_radiograph(to_bytes(make_dataset(pixels), syntax))
    np.testing.assert_array_equal(rg.pixels, ref.pixels)


def test_jpeg2000_lossy_close_to_uncompressed() -> None:
    pixels = chest_phantom()
    ref = read_radiograph(to_bytes(make_dataset(pixels)))
    rg = read_radiograph(to_bytes(make_dataset(pixels), JPEG2000, j2k_psnr=[60]))
    assert np.abs(rg.pixels - ref.pixels).mean() < 0.01


def test_jpeg_baseline_encapsulated() -> None:
    pixels = chest_phantom(bits=8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    ds = make_dataset(pixels)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.PhotometricInterpretation = "MONOCHROME2"
    rg = read_radiograph(to_bytes(ds))
    assert np.abs(rg.pixels - pixels / 255.0).mean() < 0.02


def test_window_center_width_linear() -> None:
    pixels = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (300, 2))[:, :300]
    rg = read_radiograph(to_bytes(make_dataset(pixels, WindowCenter=2048, WindowWidth=1024)))
    row = rg.pixels[0]
    assert row[pixels[0] <= 1535].max() == 0.0
    assert row[pixels[0] >= 2560].min() == 1.0
    mid = np.argmin(np.abs(pixels[0].astype(int) - 2048))
    assert row[mid] == pytest.approx(0.5, abs=0.01)


def test_rescale_then_window() -> None:
    pixels = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (300, 2))[:, :300]
    ds = make_dataset(
        pixels, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3096, WindowWidth=2048
    )  # centre at stored value 2048
    row = read_radiograph(to_bytes(ds)).pixels[0]
    mid = np.argmin(np.abs(pixels[0].astype(int) - 2048))
    assert row[mid] == pytest.approx(0.5, abs=0.01)


def test_voi_lut_sequence_wins_over_window() -> None:
    pixels = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (300, 2))[:, :300]
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", lut.tobytes())
    ds = make_dataset(pixels, WindowCenter=100, WindowWidth=10)
    ds.VOILUTSequence = Sequence([item])
    row = read_radiograph(to_bytes(ds)).pixels[0]
    np.testing.assert_allclose(row, lut[pixels[0]] / 65535.0, atol=1e-6)


def test_no_voi_uses_percentile_window() -> None:
    pixels = chest_phantom(bits=12)
    pixels[0, 0], pixels[0, 1] = 0, 4095  # outliers that a full-range scaling would honour
    rg = read_radiograph(to_bytes(make_dataset(pixels)))
    assert np.percentile(rg.pixels, 0.4) == 0.0
    assert np.percentile(rg.pixels, 99.6) == 1.0


def test_high_bits_above_bits_stored_are_ignored() -> None:
    pixels = chest_phantom(bits=12)
    clean = read_radiograph(to_bytes(make_dataset(pixels, WindowCenter=2048, WindowWidth=4096)))
    dirty = read_radiograph(
        to_bytes(make_dataset(pixels | np.uint16(0xF000), WindowCenter=2048, WindowWidth=4096))
    )
    np.testing.assert_array_equal(clean.pixels, dirty.pixels)


def test_monochrome1_synthetic_inverts() -> None:
    pixels = chest_phantom()
    kw = {"WindowCenter": 2048, "WindowWidth": 4096}
    m2 = read_radiograph(to_bytes(make_dataset(pixels, **kw)))
    m1 = read_radiograph(
        to_bytes(make_dataset(pixels, PhotometricInterpretation="MONOCHROME1", **kw))
    )
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)


def test_rgb_dicom_read_as_luminance_and_flagged() -> None:
    gray = chest_phantom(bits=8)
    rgb = np.stack([gray, gray, gray], axis=-1)
    rgb[10:60, 10:60] = (255, 0, 0)
    rg = read_radiograph(to_bytes(make_dataset(rgb)))
    assert rg.samples_per_pixel == 3 and rg.pixels.shape == gray.shape
    assert "colour" in check_quality(rg).reasons


def test_multi_frame_first_frame_and_rejected() -> None:
    frames = np.stack([chest_phantom(seed=i) for i in range(3)])
    rg = read_radiograph(to_bytes(make_dataset(frames)))
    assert rg.number_of_frames == 3 and rg.pixels.shape == frames.shape[1:]
    report = check_quality(rg)
    assert report.status.value == "reject" and "multi_frame" in report.reasons


def test_lateral_view_rejected() -> None:
    rg = read_radiograph(to_bytes(make_dataset(ViewPosition="LL")))
    assert check_quality(rg).reasons == ["lateral_view"]


class TestBadDicom:
    def test_missing_pixel_data(self) -> None:
        ds = make_dataset()
        del ds.PixelData
        with pytest.raises(XRayAgeInputError, match="no pixel data"):
            read_radiograph(to_bytes(ds), name="a.dcm")

    def test_truncated(self) -> None:
        data = to_bytes(make_dataset())
        with pytest.raises(XRayAgeInputError, match=r"^a\.dcm: "):
            read_radiograph(data[: len(data) // 2], name="a.dcm")

    def test_truncated_compressed(self) -> None:
        data = to_bytes(make_dataset(), JPEG2000Lossless)
        with pytest.raises(XRayAgeInputError):
            read_radiograph(data[: len(data) - 2000])

    def test_zero_bytes(self, tmp_path) -> None:
        path = tmp_path / "empty.dcm"
        path.write_bytes(b"")
        with pytest.raises(XRayAgeInputError, match=r"empty\.dcm: empty file"):
            read_radiograph(path)

    def test_html_saved_as_dcm(self, tmp_path) -> None:
        path = tmp_path / "page.dcm"
        path.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
        with pytest.raises(XRayAgeInputError, match=r"page\.dcm"):
            read_radiograph(path)

    def test_huge_header_refused_before_decoding(self) -> None:
        ds = make_dataset(np.zeros((4, 4), np.uint16))
        ds.Rows = ds.Columns = 60000
        with pytest.raises(ImageTooLargeError, match="60000x60000"):
            read_radiograph(to_bytes(ds))

    def test_pixel_data_shorter_than_header(self) -> None:
        ds = make_dataset(np.zeros((40, 40), np.uint16))
        ds.Rows = ds.Columns = 400
        with pytest.raises(XRayAgeInputError):
            read_radiograph(to_bytes(ds))

    def test_non_image_dicom(self) -> None:
        ds = Dataset()
        ds.PatientName = "X"
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
        with pytest.raises(XRayAgeInputError):
            read_radiograph(buf.getvalue())


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.99])
def test_a_truncated_dicom_is_called_truncated(keep: float) -> None:
    """A file cut short (an interrupted copy) says so, not "not a DICOM image"."""
    data = to_bytes(make_dataset())
    with pytest.raises(XRayAgeInputError, match="truncated or corrupt DICOM"):
        read_radiograph(data[: max(200, int(len(data) * keep))])
