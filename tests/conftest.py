"""Shared fixtures for the tests, and the one rule for the real data beside the repository.

A test that reads ``../shared/data`` (or ``$XRAYAGE_SHARED_DATA``) carries the ``data`` marker:
either written (``@pytest.mark.data``, or in ``pytestmark``) or given here to every test that
uses the ``shared_data`` fixture, directly or through another fixture. So ``-m "not data"``
deselects them all, and when the folder is absent they are skipped with one reason.
"""

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
HAS_SHARED_DATA = MANIFEST.is_file()
NO_DATA_REASON = f"{SHARED_DATA} is not present (../shared/data or $XRAYAGE_SHARED_DATA)"


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses ``shared_data`` as ``data``; skip ``data`` tests without it."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
        if not HAS_SHARED_DATA and item.get_closest_marker("data") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_DATA_REASON))


def manifest_rows(source: str | None = None) -> list[dict[str, str]]:
    """The shared manifest's rows (of one ``source``): counts in tests come from here."""
    with open(MANIFEST, newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if source is None or r["source"] == source]


def write_nih_subset(directory: Path, n: int, offset: int = 0) -> Path:
    """Write a manifest of `n` NIH rows of the shared manifest (absolute paths); return it.

    Reads the shared data: a test that calls it carries the ``data`` marker.
    """
    rows = manifest_rows("nih_cxr14")[offset : offset + n]
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
    """The shared data folder. A test using it (even through another fixture) is a ``data``
    test, skipped by the collection hook above when the folder is missing."""
    return SHARED_DATA


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory):
    """The tiny exact ONNX model as an XRayAge, once per test module."""
    from .clinical_helpers import make_estimator

    return make_estimator(tmp_path_factory)


@pytest.fixture(scope="module", params=["nema_rg1_chest_cr_j2k_lossy.dcm", "siim_nih_chest_pa.dcm"],
                ids=["nema", "siim"])
def estimate(request: pytest.FixtureRequest, estimator, shared_data: Path):
    """The estimate (radiograph and heat map kept) of each real DICOM fixture."""
    from .clinical_helpers import predict_kept

    return predict_kept(estimator, shared_data / "dicom" / request.param)


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
