"""Heat-map display: smoothed, bicubically upsampled, with a colour scale."""

from __future__ import annotations

import numpy as np

from xrayage.card import PreprocessSpec
from xrayage.explain import colormap, colour_bar, overlay, smooth_cam


def blocky_cam() -> np.ndarray:
    """A 72 x 72 map made of 3 x 3 constant cells, as a grid-pooled head gives at worst."""
    cells = np.array([[0.0, 10.0, 0.0], [10.0, 0.0, 10.0], [0.0, 10.0, 0.0]])
    return np.kron(cells, np.ones((24, 24)))


def test_smoothing_keeps_the_mean_and_removes_the_cell_edges() -> None:
    cam = blocky_cam()
    smooth = smooth_cam(cam)
    assert smooth.shape == cam.shape
    assert abs(smooth.mean() - cam.mean()) < 0.05
    step = np.abs(np.diff(cam, axis=1)).max()
    assert np.abs(np.diff(smooth, axis=1)).max() < 0.2 * step  # no jump at a cell border
    assert np.array_equal(smooth_cam(cam, sigma=0), cam)


def test_overlay_has_no_blocks() -> None:
    spec = PreprocessSpec(image_size=64)
    image = np.asarray(overlay(np.full((480, 480), 0.5, np.float32), blocky_cam(), spec),
                       dtype=np.float64)
    row = image[240, :, 0]
    assert np.abs(np.diff(row)).max() < 6  # smooth: a few grey levels per pixel at most
    assert np.ptp(row) > 40  # yet the map still shows


def test_colour_bar_runs_dark_to_bright() -> None:
    bar = np.asarray(colour_bar(100, 4), dtype=np.float64)
    assert bar.shape == (4, 100, 3)
    brightness = bar.mean(axis=(0, 2))
    assert brightness[0] < 20 and brightness[-1] > 200
    np.testing.assert_allclose(bar[0, -1] / 255, colormap(np.array(1.0)), atol=1 / 255)
