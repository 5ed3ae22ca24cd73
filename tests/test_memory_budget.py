"""The decode memory budget: refused from the header before decoding; a JPEG at reduced scale.

The peak-memory figures themselves come from ``benchmarks/bench_decode_memory.py`` (not a
timed test); here a tiny budget makes small images behave like huge ones.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from xrayage import memory
from xrayage.errors import ImageTooLargeError
from xrayage.io import read_radiograph

from .dicom_factory import make_dataset, to_bytes


@pytest.fixture
def budget_2mib() -> Iterator[None]:
    memory.set_memory_budget(2 << 20)
    try:
        yield
    finally:
        memory.set_memory_budget(None)


def jpeg(side: int, mode: str = "RGB") -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.float32)[:, None].repeat(side, 1).astype(np.uint8)
    image = Image.fromarray(ramp)
    if mode == "RGB":
        image = Image.merge("RGB", (image, image, image))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_dicom_over_budget_refused_before_decoding(budget_2mib: None) -> None:
    ds = make_dataset(np.zeros((600, 600), np.uint16))
    with pytest.raises(ImageTooLargeError, match="memory budget of 2 MiB"):
        read_radiograph(to_bytes(ds), name="big.dcm")
    ds.PixelData = b""  # a refusal from the header: the pixels are never touched
    with pytest.raises(ImageTooLargeError):
        read_radiograph(to_bytes(ds), name="big.dcm")


def test_png_over_budget_refused(budget_2mib: None) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((600, 600), np.uint16)).save(buf, "PNG")
    with pytest.raises(ImageTooLargeError, match="600x600"):
        read_radiograph(buf.getvalue(), name="big.png")


def test_jpeg_over_budget_decoded_at_reduced_scale(budget_2mib: None) -> None:
    rg = read_radiograph(jpeg(600), name="big.jpg")  # 600² x 40 B = 14 MB; 150² fits
    assert rg.pixels.shape == (150, 150)
    gray = read_radiograph(jpeg(600, "L"), name="gray.jpg")  # 600² x 8 B = 2.9 MB; 300² fits
    assert gray.pixels.shape == (300, 300)


def test_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory.memory_budget() == memory.DEFAULT_MEMORY_BUDGET
    monkeypatch.setenv(memory.ENV, "3")
    assert memory.memory_budget() == 3 << 20
    with pytest.raises(ValueError):
        memory.set_memory_budget(1000)


def test_default_budget_accepts_common_detectors_and_refuses_the_reproducer() -> None:
    assert memory.decode_estimate(4300, 3500, "dicom", 2) < memory.DEFAULT_MEMORY_BUDGET
    assert memory.decode_estimate(8944, 8944, "dicom", 2) > memory.DEFAULT_MEMORY_BUDGET
    assert memory.decode_estimate(8900, 8900, "raster", 2) < memory.DEFAULT_MEMORY_BUDGET
