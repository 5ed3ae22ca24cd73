"""Shared fixtures for the training/evaluation tests: the real data beside the repository."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("XRAYAGE_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared"
                   / "data")
).resolve()
NIH_TABLE = SHARED_DATA / "metadata" / "Data_Entry_2017_v2020.csv.gz"
NIH_IMAGES = SHARED_DATA / "images" / "nih_cxr14"
MANIFEST = SHARED_DATA / "manifest.csv"

requires_shared_data = pytest.mark.skipif(
    not MANIFEST.is_file(), reason="../shared/data (or $XRAYAGE_SHARED_DATA) is not present"
)


def write_nih_subset(directory: Path, n: int, offset: int = 0) -> Path:
    """Write a manifest of `n` NIH rows of the shared manifest (absolute paths); return it."""
    with open(MANIFEST, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"]
    rows = rows[offset : offset + n]
    for r in rows:
        r["path"] = str(MANIFEST.parent / r["path"])
    out = directory / "manifest.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; skips the test when it is missing."""
    if not MANIFEST.is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory):
    """The tiny exact ONNX model as an XRayAge, once per test module."""
    from .clinical_helpers import make_estimator

    return make_estimator(tmp_path_factory)


@pytest.fixture(scope="module", params=["nema_rg1_chest_cr_j2k_lossy.dcm", "siim_nih_chest_pa.dcm"],
                ids=["nema", "siim"])
def estimate(request: pytest.FixtureRequest, estimator):
    """The estimate (radiograph and heat map kept) of each real DICOM fixture."""
    from .clinical_helpers import predict_kept

    path = SHARED_DATA / "dicom" / request.param
    if not path.is_file():
        pytest.skip("../shared/data is not present")
    return predict_kept(estimator, path)


def synthetic_samples(n_patients: int, seed: int = 0, min_age: float = 5.0) -> list:
    """1-3 images per patient with seeded ages in [min_age, 90): for split and fold tests."""
    import numpy as np

    from xrayage.datasets import Sample

    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        age = float(rng.uniform(min_age, 90))
        out += [Sample(Path(f"p{p}_{j}.png"), age + j, patient_id=f"p{p}")
                for j in range(int(rng.integers(1, 4)))]
    return out
