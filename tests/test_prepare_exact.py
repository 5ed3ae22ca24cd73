"""The fast prepare path gives bit-identical pixels to the straightforward implementation.

The references below are the reader's and preprocessor's code before they were tuned for
speed (float64 intermediates, copies, ``fromarray``): the model was trained on what they
produce, so :func:`xrayage.io.read_radiograph`, :func:`xrayage.preprocess.to_square` and
:func:`xrayage.preprocess.normalize` must keep every float32 bit of it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from xrayage.card import PreprocessSpec
from xrayage.io import read_radiograph
from xrayage.preprocess import normalize, to_square
from xrayage.radiograph import LUMA

from .conftest import manifest_rows

SPECS = [
    PreprocessSpec(image_size=294, square="crop", quantize=True),  # the bundled model's
    PreprocessSpec(image_size=320, square="crop", quantize=True),
    PreprocessSpec(image_size=320, square="pad", quantize=True),
    PreprocessSpec(image_size=256, square="crop", quantize=False),
    PreprocessSpec(image_size=64, square="pad", quantize=False),
    PreprocessSpec(image_size=224, channels=3, mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225)),
]


# --- the reference implementation ---------------------------------------------------------
def ref_raster_pixels(image: Image.Image) -> np.ndarray:
    """Float32 luminance in [0, 1] of a decoded PIL image, as first written."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        bits = max(8, int(np.ceil(np.log2(float(arr.max(initial=0)) + 1.0))))
        return np.clip(arr / (2.0**bits - 1), 0, 1).astype(np.float32)
    if mode in ("L", "LA", "1"):
        gray = np.asarray(image.getchannel(0) if mode == "LA" else image.convert("L"))
        return gray.astype(np.float32) / 255.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return (rgb @ LUMA).astype(np.float32)


def ref_read(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return ref_raster_pixels(ImageOps.exif_transpose(image))


def ref_square(pixels: np.ndarray, mode: str) -> np.ndarray:
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


def ref_to_square(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    img = ref_square(np.asarray(pixels, dtype=np.float32), spec.square)
    size = spec.image_size
    if img.shape[0] != size:
        img = np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BILINEAR))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if spec.quantize:
        img = np.round(img * 255.0).astype(np.float32) / 255.0
    return img


def ref_normalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    x = np.repeat(img[..., None, :, :], spec.channels, axis=-3)
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return (x - mean) / std


# --- helpers ------------------------------------------------------------------------------
def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and bytes: no tolerance at all (-0.0 and NaN payloads included)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), f"max |diff| {np.abs(got - want).max()}"


def assert_route_identical(data: bytes | Path) -> None:
    """read -> to_square -> normalize equals the reference at every spec."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    pixels = read_radiograph(raw).pixels
    assert_identical(pixels, ref_read(raw))
    for spec in SPECS:
        img = to_square(pixels, spec)
        assert_identical(img, ref_to_square(pixels, spec))
        assert_identical(normalize(img, spec), ref_normalize(img, spec))
        batch = np.stack([img, img[::-1]])
        assert_identical(normalize(batch, spec), ref_normalize(batch, spec))


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save: object) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, fmt, **save)
    return buf.getvalue()


RNG = np.random.default_rng(15)
SYNTHETIC = {
    "8-bit 512x512": encode(RNG.integers(0, 256, (512, 512), dtype=np.uint8)),
    "8-bit 600x400": encode(RNG.integers(0, 256, (600, 400), dtype=np.uint8)),
    "8-bit 333x1001": encode(RNG.integers(0, 256, (333, 1001), dtype=np.uint8)),
    "8-bit 16x16 upsampled": encode(RNG.integers(0, 256, (16, 16), dtype=np.uint8)),
    "8-bit gradient 700x520": encode(np.tile(np.arange(520) % 256, (700, 1)).astype(np.uint8)),
    "16-bit 12-bit data 700x500": encode(RNG.integers(0, 4096, (700, 500)).astype(np.uint16)),
    "16-bit full scale 300x900": encode(
        np.linspace(0, 65535, 300 * 900).reshape(300, 900).astype(np.uint16)),
    "16-bit 10-bit data 512x512": encode(RNG.integers(0, 1024, (512, 512)).astype(np.uint16)),
    "16-bit all zero": encode(np.zeros((64, 80), np.uint16)),
    "RGB 400x300": encode(RNG.integers(0, 256, (400, 300, 3), dtype=np.uint8)),
    "LA 200x260": encode(RNG.integers(0, 256, (200, 260, 2), dtype=np.uint8), mode="LA"),
    "1-bit 128x96": encode(RNG.integers(0, 2, (128, 96)).astype(bool)),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_route_is_bit_identical(name: str) -> None:
    assert_route_identical(SYNTHETIC[name])


def test_exif_orientation_still_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = encode(RNG.integers(0, 256, (240, 320), dtype=np.uint8), "JPEG", exif=exif.tobytes())
    assert read_radiograph(data).pixels.shape == (320, 240)
    assert_route_identical(data)


def test_arrays_and_input_untouched() -> None:
    """Arrays straight into to_square: float64, strided, out of range, already square."""
    arrays = [RNG.random((500, 700)), RNG.random((900, 900)).astype(np.float32)[::2, 1::2],
              (RNG.random((300, 300)) * 1.4 - 0.2).astype(np.float32),
              RNG.random((294, 294)).astype(np.float32)]
    for arr in arrays:
        before = arr.copy()
        for spec in SPECS:
            assert_identical(to_square(arr, spec), ref_to_square(arr, spec))
        assert_identical(arr, before)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_shared_nih_images(shared_data: Path, index: int) -> None:
    rows = manifest_rows("nih_cxr14")
    assert_route_identical(shared_data / rows[index * (len(rows) // 5)]["path"])


@pytest.mark.parametrize("name", ["siim_nih_chest_pa.dcm", "synthetic_monochrome1.dcm",
                                  "nema_rg1_chest_cr_j2k_lossy.dcm"])
def test_shared_dicom_to_square(shared_data: Path, name: str) -> None:
    pixels = read_radiograph(shared_data / "dicom" / name).pixels
    for spec in SPECS:
        img = to_square(pixels, spec)
        assert_identical(img, ref_to_square(pixels, spec))
        assert_identical(normalize(img, spec), ref_normalize(img, spec))
