"""Splits: patient-disjoint, reproducible from the seed, stratified by age."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xrayage.datasets import Sample, load_dataset
from xrayage.datasets.splits import Split, split_patients

from .conftest import MANIFEST, synthetic_samples


@given(st.integers(5, 200), st.integers(0, 10_000), st.floats(0.05, 0.4))
@settings(max_examples=30, deadline=None)
def test_disjoint_and_complete(n: int, seed: int, frac: float) -> None:
    samples = synthetic_samples(n, seed)
    sp = split_patients(samples, val_fraction=frac, test_fraction=0.1, seed=seed)
    train, val, test = set(sp.train), set(sp.val), set(sp.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == {s.patient_id for s in samples}
    total = sum(len(sp.assign(samples, k)) for k in ("train", "val", "test"))
    assert total == len(samples)


def test_reproducible_and_seed_dependent() -> None:
    samples = synthetic_samples(300)
    a, b = split_patients(samples, seed=7), split_patients(samples, seed=7)
    assert (a.train, a.val) == (b.train, b.val)
    assert set(split_patients(samples, seed=8).val) != set(a.val)
    # Order of the input does not matter.
    assert set(split_patients(samples[::-1], seed=7).val) == set(a.val)


def test_stratified_by_age() -> None:
    samples = synthetic_samples(2000)
    sp = split_patients(samples, val_fraction=0.2, seed=1)
    age = {s.patient_id: s.age_years for s in samples}
    train = np.array([age[p] for p in sp.train])
    val = np.array([age[p] for p in sp.val])
    assert len(val) == pytest.approx(400, abs=5)
    assert abs(np.median(train) - np.median(val)) < 2.5
    assert abs(np.mean(val < 18) - np.mean(train < 18)) < 0.02


def test_save_load(tmp_path: Path) -> None:
    sp = split_patients(synthetic_samples(50), seed=3)
    sp.save(tmp_path / "split.json")
    back = Split.load(tmp_path / "split.json")
    assert (set(back.train), set(back.val), back.seed) == (set(sp.train), set(sp.val), 3)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="fraction"):
        split_patients(synthetic_samples(5), val_fraction=0.7, test_fraction=0.4)
    with pytest.raises(ValueError, match="patient_id"):
        split_patients([Sample(Path("a.png"), 40.0)])
    with pytest.raises(ValueError, match="split must be"):
        Split().assign([], "holdout")


@pytest.mark.data
def test_real_manifest_patient_disjoint() -> None:
    samples = load_dataset(f"manifest:{MANIFEST}").samples
    sp = split_patients(samples, val_fraction=0.2, seed=0)
    val_paths = {s.path for s in sp.assign(samples, "val")}
    train_paths = {s.path for s in sp.assign(samples, "train")}
    assert not val_paths & train_paths
    assert 0.15 < len(sp.val) / (len(sp.val) + len(sp.train)) < 0.25
