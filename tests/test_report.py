"""One-page HTML report: self-contained, values shown, gap against its reference."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from statistics import NormalDist

import pytest
from PIL import Image

from xrayage import AgeEstimate, XRayAge
from xrayage.outputs import render_report, write_report
from xrayage.outputs.report import gap_reference
from xrayage.quality import QualityFinding, QualityReport, QualityStatus

from .clinical_helpers import make_estimator, png_bytes, predict_kept
from .shared import NEMA


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    return make_estimator(tmp_path_factory)


@pytest.fixture(scope="module")
def nema(estimator: XRayAge, shared_data: Path) -> AgeEstimate:
    return predict_kept(estimator, NEMA)


@pytest.mark.data
def test_report_shows_result_images_and_card(nema: AgeEstimate, estimator: XRayAge,
                                             tmp_path: Path) -> None:
    page = write_report(nema, estimator.card, tmp_path / "r.html").read_text()
    assert f"{nema.xray_age:.1f}" in page
    assert f"{nema.age_interval_lower:.1f} \u2013 {nema.age_interval_upper:.1f} y" in page
    assert f"{nema.age_gap_corrected:+.1f} y" in page and "NOT FOR DIAGNOSTIC USE" in page
    assert "tiny-test 0" in page
    assert "90% split-conformal interval for chronological age (n = 100)" in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # radiograph and heat map
    assert page.count('class="scale"') == 1 and "dark = least, bright = most" in page
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (480, 480)
    assert "<svg" in page and "percentile" in page
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<script" not in page
    assert nema.radiograph.study_instance_uid in page


@pytest.mark.data
def test_report_carries_no_patient_identifiers(nema: AgeEstimate, estimator: XRayAge) -> None:
    page = render_report(nema, estimator.card)
    source = nema.radiograph.dataset
    for keyword in ("PatientID", "PatientName", "PatientBirthDate"):
        assert str(source.get(keyword)) not in page


@pytest.mark.data
def test_gap_reference_matches_the_interval(nema: AgeEstimate, estimator: XRayAge) -> None:
    ref = gap_reference(nema, estimator.card)
    assert ref is not None
    z = NormalDist().inv_cdf(0.95)
    assert ref.sigma == pytest.approx(8.0 / z)  # the tiny card's conformal quantile is 8 y
    assert ref.percentile(0.0) == pytest.approx(50.0)
    page = render_report(nema, estimator.card)
    pct = round(ref.percentile(nema.age_gap_corrected))
    assert re.search(rf"<b>{pct}(st|nd|rd|th) percentile</b>", page)


def test_rejected_input_report_says_why(estimator: XRayAge) -> None:
    est = AgeEstimate("lateral.dcm", quality=QualityReport([QualityFinding(
        "lateral_view", QualityStatus.REJECT, "view LL is lateral")]))
    page = render_report(est, estimator.card)
    assert "No X-ray age" in page and "lateral_view" in page and "<svg" not in page


def test_png_report_and_escaping(estimator: XRayAge) -> None:
    est = predict_kept(estimator, png_bytes(), name="<i onclick=x>chest.png")
    page = render_report(est, estimator.card)
    assert "&lt;i onclick=x&gt;chest.png" in page and "<i onclick" not in page
    assert "chronological age unknown" in page  # the QC message, in words
    assert "No gap" in page


def test_training_data_reads_as_words() -> None:
    from xrayage.card import ModelCard
    from xrayage.model import resolve_model_dir
    from xrayage.outputs.report import _card

    card = ModelCard.load(resolve_model_dir())
    row = next(line for line in _card(card).split("</tr>") if "Training data" in line)
    data = card.training_data[0]
    assert (f"NIH ChestX-ray14: {data['images']:,} images, {data['patients']:,} patients, "
            f"age {data['age_min']:.0f}-{data['age_max']:.0f} y") in row
    assert row.count("Wang et al.") == 1  # the licence once
    text = re.sub(r"<[^>]+>", "", row)
    assert "{" not in text and "manifest" not in text and "/" not in text  # no dict, no path
