"""The bundled default model: loads without torch, is calibrated, and beats no-skill on
the held-out NIH patients named in its card (re-measured here from the shared images)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from xrayage import XRayAge, bundled_models
from xrayage.model import DEFAULT_MODEL, resolve_model_dir
from xrayage.predict import PredictInput

from .conftest import MANIFEST
from .shared import NEMA, needs_data

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in bundled_models(),
                                reason="no bundled model in this checkout")


def test_shipped_files_are_small_and_card_is_complete() -> None:
    directory = resolve_model_dir()
    assert sum(p.stat().st_size for p in directory.iterdir()) < 50 * 2**20
    card = XRayAge.load().card
    assert card.bias_correction is not None and card.conformal is not None
    assert card.conformal.coverage == 0.9 and card.conformal.n >= 100
    validation = card.metrics["validation"]
    assert validation["mae"] < validation["mae_no_skill"]
    assert card.extra["validation_patients"], "the held-out patients must be listed"


@needs_data
def test_real_dicom_gets_a_plausible_age() -> None:
    est = XRayAge.load().predict(str(NEMA), heatmap=True)
    assert est.qc_status == "ok" and 30 < est.xray_age < 95
    assert est.xray_age_lower < est.xray_age < est.xray_age_upper
    assert est.heatmap is not None and np.isfinite(est.heatmap).all()
    bias = XRayAge.load().card.extra["cam_bias"]
    assert float(est.heatmap.mean()) + bias == pytest.approx(est.xray_age, abs=0.05)


@needs_data
@pytest.mark.slow
def test_beats_no_skill_on_held_out_patients() -> None:
    model = XRayAge.load(threads=2)
    held_out = set(model.card.extra["validation_patients"])
    with open(MANIFEST, newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["patient_id"] in held_out and float(r["age_years"]) >= 18]
    assert len(rows) >= 100
    items = [PredictInput(str(MANIFEST.parent / r["path"]), r["path"], float(r["age_years"]))
             for r in rows]
    results = list(model.predict_many(items))
    pred = np.array([e.xray_age for e in results])
    age = np.array([float(r["age_years"]) for r in rows])
    mae = float(np.abs(pred - age).mean())
    no_skill = float(np.abs(age - model.card.metrics["train_median_age"]).mean())
    assert mae < 0.75 * no_skill
    assert mae == pytest.approx(model.card.metrics["validation"]["mae"], abs=0.3)
