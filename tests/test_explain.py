"""Heat-map display: smoothed, bicubically upsampled, with a colour scale."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_tta_map_is_the_views_maps_mapped_back() -> None:
    """A map that is the view itself at map resolution comes back onto the image: the
    mean of the mapped-back maps matches the plain view's map, and keeps the mean."""
    from PIL import Image

    from xrayage.preprocess import tta_mean_map, tta_views

    side, h = 294, 72
    img = np.zeros((side, side), np.float32)
    img[100:180, 60:120], img[40:60, 200:260] = 1.0, 0.5

    def as_map(view: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(view, mode="F").resize(
            (h, h), Image.Resampling.BOX), np.float32)

    maps = np.stack([as_map(v) for v in [img, *tta_views(img)]])
    mean_map = tta_mean_map(maps, side)
    assert mean_map.shape == (h, h)
    assert float(mean_map.mean()) == pytest.approx(float(maps.mean()), abs=1e-6)
    assert np.abs(maps[1:] - maps[0]).max() > 0.8  # the views' own maps are displaced
    assert np.abs(mean_map - maps[0])[4:-4, 4:-4].max() < 0.1  # mapped back, they agree
    assert np.array_equal(tta_mean_map(maps[:1], side), maps[0])


@pytest.mark.data
def test_tta_heat_map_adds_up_to_the_xray_age() -> None:
    """Under --tta the age is the mean over four views, and so is the map: its mean plus
    the head's bias is the X-ray age (it was off by 0.4-2.8 y when it was one view's)."""
    from xrayage import XRayAge

    from .shared import NEMA, NIH_DIR

    estimator = XRayAge.load(tta=True)
    bias = float(estimator.card.extra["cam_bias"])
    for path in [NEMA, *sorted(NIH_DIR.glob("*.png"))[:2]]:
        est = estimator.predict(path, heatmap=True)
        assert est.heatmap is not None and est.xray_age is not None
        assert float(est.heatmap.mean()) + bias == pytest.approx(est.xray_age, abs=0.01)
