"""Preprocessing: square, resize, quantise, normalise, as the card says."""

from __future__ import annotations

import numpy as np
import pytest

from xrayage.card import PreprocessSpec
from xrayage.preprocess import normalize, preprocess, square, to_square
from xrayage.radiograph import Radiograph


def test_square_crop_and_pad() -> None:
    img = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    cropped = square(img, "crop")
    np.testing.assert_array_equal(cropped, img[1:5])
    padded = square(img, "pad")
    assert padded.shape == (6, 6)
    np.testing.assert_array_equal(padded[:, 1:5], img)
    assert padded[:, 0].sum() == 0 and padded[:, 5].sum() == 0


def test_resize_is_antialiased() -> None:
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)
    out = to_square(checker, PreprocessSpec(image_size=64, quantize=False))
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert np.abs(out - 0.5).max() < 0.02, "aliasing: a fine checkerboard must average to gray"


def test_quantize_matches_uint8_cache() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((300, 300), dtype=np.float32)
    out = to_square(img, PreprocessSpec(image_size=128))
    np.testing.assert_array_equal(out * 255, np.round(out * 255))


@pytest.mark.parametrize(
    ("channels", "mean", "std"),
    [(1, (0.5,), (0.5,)), (3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
)
def test_normalize_channels(channels: int, mean: tuple, std: tuple) -> None:
    spec = PreprocessSpec(image_size=32, channels=channels, mean=mean, std=std)
    x = normalize(np.full((32, 32), 0.5, np.float32), spec)
    assert x.shape == (channels, 32, 32)
    np.testing.assert_allclose(x[:, 0, 0], (0.5 - np.array(mean)) / np.array(std), rtol=1e-6)
    assert normalize(np.zeros((4, 32, 32), np.float32), spec).shape == (4, channels, 32, 32)


def test_preprocess_accepts_radiograph_or_array() -> None:
    pixels = np.random.default_rng(0).random((400, 300), dtype=np.float32)
    spec = PreprocessSpec(image_size=64)
    np.testing.assert_array_equal(preprocess(Radiograph(pixels), spec), preprocess(pixels, spec))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"square": "stretch"},
        {"channels": 2},
        {"image_size": 8},
        {"std": (0.0,)},
        {"mean": (0.1, 0.2)},
    ],
)
def test_invalid_spec_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(**kwargs)
