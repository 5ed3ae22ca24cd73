"""The bundled default model: loads without torch, is calibrated and cross-validated, and
beats no-skill on another source it never saw (re-measured here from the shared images)."""

from __future__ import annotations

from pathlib import PurePath

import numpy as np
import pytest

from xrayage import XRayAge, bundled_models
from xrayage.datasets import parse_spec
from xrayage.evaluate import evaluate
from xrayage.model import DEFAULT_MODEL, resolve_model_dir

from .conftest import MANIFEST
from .shared import NEMA

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in bundled_models(),
                                reason="no bundled model in this checkout")


def test_shipped_files_are_small_and_card_is_complete() -> None:
    directory = resolve_model_dir()
    assert sum(p.stat().st_size for p in directory.iterdir()) < 50 * 2**20
    card = XRayAge.load().card
    assert card.bias_correction is not None and card.conformal is not None
    assert card.conformal.coverage == 0.9 and card.conformal.n >= 100
    validation = card.metrics["validation"]
    assert "cross-fitting" in validation["method"]
    assert validation["n"] == card.metrics["train_images"] and validation["patients"] > 300
    assert validation["mae"] < 0.75 * validation["mae_no_skill"]
    low, high = validation["ci95"]["mae"]
    assert low < validation["mae"] < high


def test_card_names_its_training_data_without_build_paths() -> None:
    card = XRayAge.load().card
    assert card.training_data
    for entry in card.training_data:
        assert entry["name"] and entry["images"] > 0 and entry["patients"] > 0
        _, path, options = parse_spec(entry["spec"])
        assert not any(PurePath(v).is_absolute() for v in (path, *options.values()))
        parts = entry["licence"].split("; ")
        assert len(parts) == len(set(parts))  # each licence once


@pytest.mark.data
def test_real_dicom_gets_a_plausible_age() -> None:
    est = XRayAge.load().predict(str(NEMA), heatmap=True)
    assert est.qc_status == "ok" and 30 < est.xray_age < 95
    assert est.age_interval_lower < est.xray_age < est.age_interval_upper
    assert est.heatmap is not None and np.isfinite(est.heatmap).all()
    bias = XRayAge.load().card.extra["cam_bias"]
    assert float(est.heatmap.mean()) + bias == pytest.approx(est.xray_age, abs=0.05)


@pytest.mark.data
@pytest.mark.slow
def test_beats_no_skill_on_another_source() -> None:
    model = XRayAge.load(threads=2)
    recorded = model.card.metrics["other_source"]
    result = evaluate(f"manifest:{MANIFEST}?source=covid_idc", adults_only=True, threads=2)
    m = result.metrics
    assert m["n"] == recorded["n"] >= 300
    assert m["mae"] < 0.75 * m["mae_no_skill"] and abs(m["bias"]) < 3
    assert m["mae"] == pytest.approx(recorded["mae"], abs=0.05)
