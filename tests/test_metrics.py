"""Agreement metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrayage.metrics import age_band, age_metrics, grouped_metrics, icc1


def test_known_values() -> None:
    y = np.array([20.0, 40.0, 60.0, 80.0])
    p = np.array([25.0, 38.0, 61.0, 72.0])
    m = age_metrics(age_years=y, xray_age=p, train_median=45.0)
    err = p - y
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(np.abs(err).mean())
    assert m["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert m["bias"] == pytest.approx(err.mean())
    assert m["r"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["r2"] == pytest.approx(1 - (err**2).sum() / ((y - y.mean()) ** 2).sum())
    assert m["mae_no_skill"] == pytest.approx(np.abs(y - 45).mean())
    assert m["age_mean"] == 50 and m["age_sd"] == pytest.approx(y.std(ddof=1))


def test_icc_penalises_bias_unlike_r() -> None:
    y = np.linspace(20, 80, 50)
    assert icc1(y, y) == pytest.approx(1.0)
    m = age_metrics(age_years=y, xray_age=y + 10)
    assert m["r"] == pytest.approx(1.0) and m["icc"] < 0.9
    # Hand-computed one-way ICC for two ratings of three subjects.
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 4.0])
    x = np.stack([a, b], 1)
    msb = 2 * ((x.mean(1) - x.mean()) ** 2).sum() / 2
    msw = ((x - x.mean(1, keepdims=True)) ** 2).sum() / 3
    assert icc1(a, b) == pytest.approx((msb - msw) / (msb + msw))


def test_degenerate() -> None:
    m = age_metrics(age_years=[], xray_age=[])
    assert m["n"] == 0 and math.isnan(m["mae"])
    one = age_metrics(age_years=[50.0], xray_age=[52.0])
    assert one["mae"] == 2 and math.isnan(one["r"]) and math.isnan(one["icc"])
    const = age_metrics(age_years=[50.0, 50.0], xray_age=[40.0, 60.0])
    assert math.isnan(const["r2"]) and math.isnan(const["r"])
    with pytest.raises(ValueError, match="differ"):
        age_metrics(age_years=[1.0, 2.0], xray_age=[1.0])


def test_no_skill_defaults_to_data_median() -> None:
    m = age_metrics(age_years=[10.0, 20.0, 90.0], xray_age=[10.0, 20.0, 90.0])
    assert m["no_skill_median"] == 20 and m["mae_no_skill"] == pytest.approx(80 / 3)


def test_groups_and_bands() -> None:
    y = np.array([20.0, 30.0, 70.0, 85.0])
    p = y + np.array([1.0, -1.0, 2.0, 4.0])
    g = grouped_metrics(age_years=y, xray_age=p, groups={
        "sex": ["M", "F", None, ""], "age_band": [age_band(a) for a in y]})
    assert g["sex"]["M"]["n"] == 1 and g["sex"]["M"]["mae"] == 1.0
    assert g["sex"]["unknown"]["n"] == 2 and "None" not in g["sex"]
    assert set(g["age_band"]) == {"18-39", "60-79", "80+"}
    assert age_band(5) == "<18" and age_band(40) == "40-59"
    with pytest.raises(ValueError, match="labels"):
        grouped_metrics(age_years=y, xray_age=p, groups={"sex": ["M"]})
