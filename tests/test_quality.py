"""Quality checks: each refusal and warning, and their aggregation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xrayage.io import read_radiograph
from xrayage.quality import QualityStatus, check_quality
from xrayage.radiograph import Radiograph

from .shared import NIH_DIR


def chest(**kw: object) -> Radiograph:
    rng = np.random.default_rng(0)
    base = Radiograph(
        rng.random((512, 480), dtype=np.float32),
        age_years=50.0,
        sex="F",
        view_position="PA",
        modality="DX",
        body_part_examined="CHEST",
        source_format="dicom",
    )
    return replace(base, **kw)


def test_clean_dicom_is_ok() -> None:
    report = check_quality(chest())
    assert report.status is QualityStatus.OK and report.reasons == [] and report.accepted


@pytest.mark.parametrize(
    ("changes", "code", "status"),
    [
        ({"modality": "CT"}, "not_radiograph", "reject"),
        ({"modality": "MG"}, "not_radiograph", "reject"),
        ({"modality": "OT"}, "modality_uncertain", "warn"),
        ({"body_part_examined": "KNEE"}, "not_chest", "reject"),
        ({"body_part_examined": "PORTABLE CHEST"}, None, "ok"),
        ({"view_position": "LL"}, "lateral_view", "reject"),
        ({"view_position": "LATERAL"}, "lateral_view", "reject"),
        ({"view_position": "AP"}, None, "ok"),
        ({"view_position": "LLD"}, "view_uncertain", "warn"),
        ({"view_position": None}, "view_unknown", "warn"),
        ({"age_years": 17.9}, "child", "reject"),
        ({"age_years": 18.0}, None, "ok"),
        ({"age_years": None}, "age_unknown", "warn"),
        ({"age_years": 130.0}, "age_implausible", "warn"),
        ({"number_of_frames": 2}, "multi_frame", "reject"),
        (
            {"pixels": np.random.default_rng(1).random((200, 900), np.float32)},
            "too_small",
            "reject",
        ),
        (
            {"pixels": np.random.default_rng(1).random((300, 900), np.float32)},
            "aspect_ratio",
            "warn",
        ),
        ({"pixels": np.full((512, 512), 0.7, np.float32)}, "blank", "reject"),
        ({"pixels": np.zeros((512, 512), np.float32)}, "blank", "reject"),
        ({"colour_fraction": 0.05}, "colour", "warn"),
        ({"modality": None}, "modality_unknown", "warn"),
    ],
)
def test_single_finding(changes: dict, code: str | None, status: str) -> None:
    report = check_quality(chest(**changes))
    assert report.status.value == status
    assert report.reasons == ([code] if code else [])
    assert len(report.messages) == len(report.reasons)


def test_worst_status_wins_and_all_reasons_kept() -> None:
    report = check_quality(chest(view_position=None, age_years=10.0))
    assert report.status is QualityStatus.REJECT
    assert report.reasons == ["view_unknown", "child"]


def test_png_without_header_only_warns() -> None:
    rg = replace(
        chest(),
        source_format="png",
        modality=None,
        body_part_examined=None,
        view_position=None,
        age_years=None,
    )
    report = check_quality(rg)
    assert report.status is QualityStatus.WARN
    assert report.reasons == ["view_unknown", "age_unknown"]


def test_custom_checks_can_be_added() -> None:
    from xrayage.quality import CHECKS, QualityFinding

    def always_flag(rg: Radiograph):
        yield QualityFinding("flag", QualityStatus.WARN, "flagged")

    assert check_quality(chest(), [*CHECKS, always_flag]).reasons == ["flag"]


@pytest.mark.data
def test_real_nih_png_passes_pixel_checks() -> None:
    rg = read_radiograph(NIH_DIR / "00000001_000.png")
    assert check_quality(rg).reasons == ["view_unknown", "age_unknown"]
