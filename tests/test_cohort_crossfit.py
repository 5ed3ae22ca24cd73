"""Crossfit: patient-disjoint folds; out-of-fold predictions that ``analyze`` trusts.

Fold assignment and the out-of-fold file live in :mod:`xrayage.train.oof`; the cohort
analysis only reads that file (and imports nothing from :mod:`xrayage.train`).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xrayage.provenance import read_provenance
from xrayage.train.oof import OOF_FIELDS, assign_folds, write_oof

from .conftest import synthetic_samples, write_nih_subset
from .shared import SHARED_DATA


def test_folds_are_patient_disjoint_balanced_and_seeded() -> None:
    samples = synthetic_samples(103, min_age=20.0)
    patients, ages = [s.patient_id for s in samples], [s.age_years for s in samples]
    fold = assign_folds(patients, 5, ages=ages, seed=3)
    fold_of = dict(zip(patients, fold.tolist(), strict=True))
    assert len(fold) == len(samples) and set(fold_of) == set(patients)
    assert all(fold_of[p] == f for p, f in zip(patients, fold.tolist(), strict=True))
    counts = np.bincount(list(fold_of.values()))
    assert counts.max() - counts.min() <= 1
    assert (fold == assign_folds(patients, 5, ages=ages, seed=3)).all()
    assert not (fold == assign_folds(patients, 5, ages=ages, seed=4)).all()
    age_of = {s.patient_id: s.age_years for s in samples}
    means = [np.mean([age_of[p] for p, f in fold_of.items() if f == i]) for i in range(5)]
    assert np.ptp(means) < 8  # every fold spans the age range
    # without ages: still patient-disjoint and balanced in size
    plain = dict(zip(patients, assign_folds(patients, 5, seed=3).tolist(), strict=True))
    assert np.ptp(np.bincount(list(plain.values()))) <= 1


@pytest.mark.parametrize(("k", "message"), [(1, "k >= 2"), (200, "too few for 200 folds")])
def test_bad_fold_counts(k: int, message: str) -> None:
    samples = synthetic_samples(10, min_age=20.0)
    with pytest.raises(ValueError, match=message):
        assign_folds([s.patient_id for s in samples], k)


def test_folds_need_patient_ids_and_matching_ages() -> None:
    with pytest.raises(ValueError, match="no patient id"):
        assign_folds(["p1", "", "p2"], 2)
    with pytest.raises(ValueError, match="2 ages for 3"):
        assign_folds(["p1", "p2", "p3"], 2, ages=[1.0, 2.0])


def test_write_oof_columns_sidecar_and_pooled_correction(tmp_path: Path) -> None:
    from xrayage.cohort import read_predictions

    rng = np.random.default_rng(0)
    age = rng.uniform(20, 90, 60)
    pred = 0.6 * age + 20 + rng.normal(0, 3, 60)
    rows = [{"path": f"x{i}.png", "patient_id": f"p{i // 2}", "fold": i // 2 % 3,
             "age_years": float(a), "xray_age": float(p), "sex": None if i % 7 else "F",
             "view": "PA", "qc_reasons": ["a", "b"], "source": "s"}
            for i, (a, p) in enumerate(zip(age, pred, strict=True))]
    rows.append({"path": "failed.png", "patient_id": "p99", "fold": 0, "age_years": 50.0,
                 "xray_age": None, "sex": None, "view": ""})
    path = write_oof(tmp_path / "oof.csv", rows, method="test", k=3, seed=1,
                     fields=["qc_reasons", "path", "source"], nested=False)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        written = list(reader)
    assert reader.fieldnames == [*OOF_FIELDS, "qc_reasons", "source"]
    assert written[0]["qc_reasons"] == "a;b" and written[0]["sex"] == "F"
    assert written[1]["sex"] == "" and written[-1]["xray_age"] == ""
    assert written[-1]["age_gap"] == written[-1]["age_gap_corrected"] == ""
    corrected = np.array([float(r["age_gap_corrected"]) for r in written[:-1]])
    assert abs(np.corrcoef(corrected, age)[0, 1]) < 0.05  # the pooled correction
    assert float(written[3]["age_gap"]) == pytest.approx(pred[3] - age[3], abs=0.006)
    sidecar = read_provenance(path)
    assert sidecar is not None and sidecar["out_of_fold"] and sidecar["patient_disjoint"]
    assert (sidecar["method"], sidecar["k"], sidecar["seed"], sidecar["nested"]) == (
        "test", 3, 1, False)
    assert sidecar["bias_correction"]["n"] == 60
    df, prov = read_predictions(path)
    assert prov.status == "out-of-fold" and prov.details["k"] == 3 and len(df) == 61


def test_write_oof_needs_the_core_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks"):
        write_oof(tmp_path / "o.csv", [{"path": "x", "xray_age": 1.0}], method="m", k=2,
                  seed=0)


def test_cohort_imports_nothing_from_train() -> None:
    code = ("import sys, xrayage.cohort, xrayage.cohort.table, xrayage.cohort.analysis; "
            "bad = sorted(m for m in sys.modules if m.startswith(('xrayage.train', 'torch'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.data
def test_crossfit_end_to_end(tmp_path: Path) -> None:
    """Two folds of a tiny ResNet on 24 NIH images: each image predicted by the other model."""
    pytest.importorskip("lightning")
    from xrayage.cli.main import main
    from xrayage.train.crossfit import crossfit
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
        oof = list(csv.DictReader(handle))
    assert len(oof) == 30
    # the manifest's views reach the quality checks: no "view unknown" where a view is given
    assert all(r["view"] for r in oof)
    assert not [r["path"] for r in oof if "view_unknown" in r["qc_reasons"]]
