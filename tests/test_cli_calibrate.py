"""``xrayage calibrate``: card updated from held-out predictions, coverage measured."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from xrayage.card import ModelCard
from xrayage.cli.main import main
from xrayage.errors import XRayAgeDeprecationWarning

from .onnx_factory import build_tiny_model


def write_predictions(path: Path, n: int, seed: int = 0, age_column: str = "age_years") -> None:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    pred = 0.7 * age + 15 + rng.normal(0, 6, n)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "xray_age", age_column, "qc_status"])
        for i in range(n):
            writer.writerow([f"img{i}.png", f"{pred[i]:.2f}", f"{age[i]:.1f}", "ok"])
        writer.writerow(["rejected.png", "", "12.0", "reject"])


def test_calibrate_updates_card(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m", conformal=False, bias=False)
    sha = ModelCard.load(model_dir).onnx_sha256
    write_predictions(tmp_path / "held_out.csv", 600)
    assert main(["calibrate", str(model_dir), str(tmp_path / "held_out.csv"),
                 "--in-place"]) == 0
    card = ModelCard.load(model_dir)
    assert card.onnx_sha256 == sha
    assert card.bias_correction.slope == pytest.approx(0.7, abs=0.05)
    assert card.bias_correction.n == 600
    rows = list(csv.DictReader(open(tmp_path / "held_out.csv")))[:600]  # noqa: SIM115
    cal = card.conformal
    pred = np.array([float(r["xray_age"]) for r in rows])
    centre = cal.centre_mean + cal.centre_slope * (pred - cal.centre_mean)
    scores = sorted(np.abs(centre - [float(r["age_years"]) for r in rows]))
    assert cal.quantile == scores[int(np.ceil(601 * 0.9)) - 1]
    assert cal.centre_slope > 1.0  # the predictions regress to the mean (slope 0.7)
    assert 0.85 <= cal.empirical_coverage <= 0.95
    bands = cal.rates["by_age_band"]
    assert set(bands) == {"18-39", "40-59", "60-79", "80+"}
    # about 85 films per band: a standard error of 0.03 around the chosen 0.86-0.94
    assert all(0.80 <= b["coverage"] <= 0.97 for b in bands.values())


def test_calibrate_reads_the_legacy_age_column_with_a_warning(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m", conformal=False, bias=False)
    write_predictions(tmp_path / "old.csv", 100, age_column="chronological_age")
    with pytest.warns(XRayAgeDeprecationWarning, match="'chronological_age'"):
        assert main(["calibrate", str(model_dir), str(tmp_path / "old.csv"), "--in-place"]) == 0
    assert ModelCard.load(model_dir).bias_correction.n == 100


def test_calibrate_needs_enough_rows(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    write_predictions(tmp_path / "few.csv", 5)
    assert main(["calibrate", str(model_dir), str(tmp_path / "few.csv"), "--in-place"]) == 2


def test_calibrate_never_changes_the_model_it_reads_unless_asked(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m", conformal=False, bias=False)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    write_predictions(tmp_path / "held_out.csv", 100)
    # neither --out nor --in-place: a usage error, nothing written
    assert main(["calibrate", str(model_dir), str(tmp_path / "held_out.csv")]) == 2
    both = ["--out", str(tmp_path / "x"), "--in-place"]
    assert main(["calibrate", str(model_dir), str(tmp_path / "held_out.csv"), *both]) == 2
    out = tmp_path / "calibrated"
    assert main(["calibrate", str(model_dir), str(tmp_path / "held_out.csv"),
                 "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert ModelCard.load(model_dir).bias_correction is None
    assert ModelCard.load(out).bias_correction.n == 100
    assert ModelCard.load(out).onnx_sha256 == ModelCard.load(model_dir).onnx_sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    # an existing, non-empty --out is refused
    assert main(["calibrate", str(model_dir), str(tmp_path / "held_out.csv"),
                 "--out", str(out)]) == 2
