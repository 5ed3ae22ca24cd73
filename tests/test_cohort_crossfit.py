"""Crossfit: patient-disjoint folds; out-of-fold predictions that ``analyze`` trusts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from xrayage.datasets.splits import assign_folds

from .conftest import synthetic_samples, write_nih_subset
from .shared import SHARED_DATA


def test_folds_are_patient_disjoint_balanced_and_seeded() -> None:
    samples = synthetic_samples(103, min_age=20.0)
    folds = assign_folds(samples, 5, seed=3)
    assert set(folds) == {s.patient_id for s in samples}
    counts = np.bincount(list(folds.values()))
    assert counts.max() - counts.min() <= 1
    assert folds == assign_folds(samples, 5, seed=3) != assign_folds(samples, 5, seed=4)
    ages = {s.patient_id: s.age_years for s in samples}
    means = [np.mean([ages[p] for p, f in folds.items() if f == i]) for i in range(5)]
    assert np.ptp(means) < 8  # every fold spans the age range


@pytest.mark.parametrize(("k", "message"), [(1, "k >= 2"), (200, "too few for 200 folds")])
def test_bad_fold_counts(k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign_folds(synthetic_samples(10, min_age=20.0), k)


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.data
def test_crossfit_end_to_end(tmp_path: Path) -> None:
    """Two folds of a tiny ResNet on 24 NIH images: each image predicted by the other model."""
    pytest.importorskip("lightning")
    from xrayage.cli.main import main
    from xrayage.cohort.crossfit import crossfit
    from xrayage.train.fit import TrainConfig

    with open(SHARED_DATA / "manifest.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["source"] == "nih_cxr14" and float(r["age_years"]) >= 18][:24]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        w = csv.DictWriter(handle, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": str(SHARED_DATA / r["path"])} for r in rows)
    cfg = TrainConfig(data=[f"manifest:{manifest}"], out=str(tmp_path / "run"),
                      backbone="resnet18", image_size=64, epochs=1, max_steps=2, batch_size=8,
                      num_workers=0, progress=False, cache_workers=1)
    path = crossfit(cfg, k=2, threads=1)
    with open(path, encoding="utf-8") as handle:
        oof = list(csv.DictReader(handle))
    assert len(oof) == 24 and {r["fold"] for r in oof} == {"0", "1"}
    for i in (0, 1):
        with open(tmp_path / "run" / f"fold{i}" / "train_manifest.csv", encoding="utf-8") as f:
            trained_on = {r["patient_id"] for r in csv.DictReader(f)}
        held_out = {r["patient_id"] for r in oof if r["fold"] == str(i)}
        assert held_out and not held_out & trained_on
    sidecar = json.loads(Path(str(path) + ".provenance.json").read_text())
    assert sidecar["out_of_fold"] and sidecar["k"] == 2
    onnx = tmp_path / "run" / "fold0" / "model" / "model.onnx"
    mtime = onnx.stat().st_mtime_ns
    assert crossfit(cfg, k=2, threads=1) == path  # resumes: finished folds are not retrained
    assert onnx.stat().st_mtime_ns == mtime
    out = tmp_path / "analysis"
    assert main(["analyze", str(path), "--expand-findings", "findings", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["status"] == "out-of-fold"


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.data
def test_crossfit_cli_ridge_head_with_views(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from xrayage.cli.main import main

    manifest = write_nih_subset(tmp_path, 30)
    run = tmp_path / "run"
    assert main(["crossfit", "--data", f"manifest:{manifest}", "--out", str(run), "-k", "2",
                 "--backbone", "resnet18", "--image-size", "64", "--head", "ridge",
                 "--ridge-views", "1", "--num-workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    for i in (0, 1):
        info = json.loads((run / f"fold{i}" / "run.json").read_text())
        assert info["head"] == "ridge" and info["probe_views"] == 2
    with open(run / "oof_predictions.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 30
