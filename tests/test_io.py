"""PNG/JPEG reading, input kinds, size limits, and a fuzz test of the whole reader."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from xrayage.errors import ImageTooLargeError, UnsupportedFormatError, XRayAgeInputError
from xrayage.io import read_radiograph

from .dicom_factory import make_dataset, to_bytes
from .shared import NIH_DIR, SIIM


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(rows: int = 300, cols: int = 400) -> np.ndarray:
    return np.tile(np.linspace(0, 255, cols).astype(np.uint8), (rows, 1))


def test_png_8bit_gray() -> None:
    rg = read_radiograph(encode(Image.fromarray(gradient())))
    assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (300, 400)
    assert (rg.source_format, rg.bits_stored, rg.samples_per_pixel) == ("png", 8, 1)
    assert rg.pixels[0, 0] == 0.0 and rg.pixels[0, -1] == 1.0
    assert rg.age_years is None and rg.view_position is None


def test_png_16bit() -> None:
    arr = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))
    rg = read_radiograph(encode(Image.fromarray(arr)))
    assert rg.bits_stored == 16
    np.testing.assert_allclose(rg.pixels[0], arr[0] / 65535.0, atol=1e-6)


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_png_16bit_container_with_fewer_bits(bits: int) -> None:
    # detector data (e.g. 12-bit) saved in a 16-bit PNG must not read as a dark image
    top = 2**bits - 1
    arr = np.tile(np.linspace(0, top, 400).astype(np.uint16), (300, 1))
    rg = read_radiograph(encode(Image.fromarray(arr)))
    assert rg.bits_stored == bits
    np.testing.assert_allclose(rg.pixels[0], arr[0] / top, atol=1e-6)
    assert rg.pixels.max() == 1.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_give_gray(mode: str) -> None:
    gray = Image.fromarray(gradient())
    rg = read_radiograph(encode(gray.convert(mode)))
    np.testing.assert_allclose(rg.pixels, gradient() / 255.0, atol=2 / 255)
    assert rg.colour_fraction == 0.0


def test_jpeg() -> None:
    rg = read_radiograph(encode(Image.fromarray(gradient()), "JPEG", quality=95))
    assert rg.source_format == "jpeg"
    assert np.abs(rg.pixels - gradient() / 255.0).mean() < 0.01


def test_exif_orientation_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    data = encode(Image.fromarray(gradient()), "JPEG", exif=exif.tobytes())
    rg = read_radiograph(data)
    assert rg.pixels.shape == (400, 300)
    assert rg.pixels[0, 0] < 0.05 and rg.pixels[-1, 0] > 0.95


def test_path_bytes_and_file_object_agree(tmp_path: Path) -> None:
    data = encode(Image.fromarray(gradient()))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    a, b, c = read_radiograph(path), read_radiograph(data), read_radiograph(io.BytesIO(data))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.pixels, c.pixels)
    assert a.name == "x.png"


def test_dicom_found_by_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(to_bytes(make_dataset()))
    assert read_radiograph(path).source_format == "dicom"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR claims a size, with a tiny compressed body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )


def test_decompression_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        read_radiograph(png_header_claiming(60000, 60000), name="bomb.png")
    with pytest.raises(ImageTooLargeError, match="9000x9000"):
        read_radiograph(png_header_claiming(9000, 9000), max_pixels=10_000_000)


def test_pixel_limit_configurable() -> None:
    data = encode(Image.fromarray(gradient()))
    with pytest.raises(ImageTooLargeError):
        read_radiograph(data, max_pixels=1000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", XRayAgeInputError),
        (b"hello world" * 20, UnsupportedFormatError),
        (b"%PDF-1.4\n" + b"0" * 300, UnsupportedFormatError),
    ],
)
def test_garbage(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        read_radiograph(data)


def test_truncated_png() -> None:
    data = encode(Image.fromarray(gradient()))
    with pytest.raises(XRayAgeInputError, match=r"t\.png: corrupt PNG"):
        read_radiograph(data[: len(data) // 2], name="t.png")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(XRayAgeInputError, match="no such file"):
        read_radiograph(tmp_path / "nope.dcm")
    with pytest.raises(XRayAgeInputError, match="directory"):
        read_radiograph(tmp_path)


def test_wrong_argument_type() -> None:
    with pytest.raises(TypeError):
        read_radiograph(123)  # type: ignore[arg-type]


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut else buf)


EDITS = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), max_size=40)


@pytest.mark.data
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=EDITS, cut=st.none() | st.integers(1, 130_000))
def test_fuzz_dicom_raises_only_input_errors(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = mutate(SIIM.read_bytes(), edits, cut)
    try:
        rg = read_radiograph(data, max_pixels=4_000_000)
    except XRayAgeInputError:
        return
    assert rg.pixels.dtype == np.float32 and np.isfinite(rg.pixels).all()


@pytest.mark.data
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=EDITS, cut=st.none() | st.integers(1, 200_000))
def test_fuzz_png_raises_only_input_errors(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = mutate((NIH_DIR / "00000001_000.png").read_bytes(), edits, cut)
    try:
        rg = read_radiograph(data, max_pixels=4_000_000)
    except XRayAgeInputError:
        return
    assert rg.pixels.dtype == np.float32 and np.isfinite(rg.pixels).all()
