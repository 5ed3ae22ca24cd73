"""Paths to the shared real data beside the repository (never copied into it).

A test that reads them carries ``@pytest.mark.data`` (see conftest.py): skipped, with one
reason, when the folder is absent, and deselected by ``-m "not data"``.
"""

from __future__ import annotations

from .conftest import SHARED_DATA

DICOM_DIR = SHARED_DATA / "dicom"
NEMA = DICOM_DIR / "nema_rg1_chest_cr_j2k_lossy.dcm"
SIIM = DICOM_DIR / "siim_nih_chest_pa.dcm"
SIIM_MONO1 = DICOM_DIR / "synthetic_monochrome1.dcm"
NIH_DIR = SHARED_DATA / "images" / "nih_cxr14"
