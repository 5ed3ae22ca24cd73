"""Paths to the shared real data beside the repository (never copied into it)."""

from __future__ import annotations

import pytest

from .conftest import SHARED_DATA

DICOM_DIR = SHARED_DATA / "dicom"
NEMA = DICOM_DIR / "nema_rg1_chest_cr_j2k_lossy.dcm"
SIIM = DICOM_DIR / "siim_nih_chest_pa.dcm"
SIIM_MONO1 = DICOM_DIR / "synthetic_monochrome1.dcm"
NIH_DIR = SHARED_DATA / "images" / "nih_cxr14"

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
