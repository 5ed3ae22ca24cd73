"""Content quality checks: refusals by what the image shows, in every entry point."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage.card import ContentCheckSpec, ModelCard
from xrayage.content import ContentScores, content_findings
from xrayage.evaluate import evaluate
from xrayage.pipeline import PredictInput, Prepared, estimate_batches, prepare
from xrayage.predict import XRayAge
from xrayage.quality import QualityStatus

from .conftest import SHARED_DATA, manifest_rows
from .onnx_factory import build_tiny_model


def png(level: float, *, seed: int = 0, checker: bool = False) -> bytes:
    """A 300 x 300 film of mean `level` with noise (or a checkerboard of 37-px squares)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(level + rng.normal(0, 0.05, (300, 300)), 0, 1)
    if checker:
        yy, xx = np.mgrid[:300, :300]
        arr = ((yy // 37 + xx // 37) % 2) * 0.8 + 0.1
    buf = io.BytesIO()
    Image.fromarray((arr * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-content"), content=True)


def spec(**changes: float) -> ContentCheckSpec:
    base = dict(file="q.onnx", sha256="", classes=("frontal_chest", "lateral", "inverted"),
                reject_below=0.2, warn_below=0.5, child_above=0.9, mirrored_above=0.9,
                ood_above=10.0, ood_warn_above=8.0, ood_dims=4)
    return ContentCheckSpec(**{**base, **changes})  # type: ignore[arg-type]


def scores(frontal: float = 0.99, child: float = 0.0, mirrored: float = 0.0,
           distance: float = 2.0) -> ContentScores:
    rest = 1.0 - frontal
    return ContentScores({"frontal_chest": frontal, "lateral": rest * 0.2,
                          "inverted": rest * 0.8}, child, mirrored, distance)


def codes(findings: list) -> list[tuple[str, str]]:
    return [(f.code, f.status.value) for f in findings]


def test_findings_follow_the_thresholds() -> None:
    assert content_findings(scores(), spec(), None) == []
    assert codes(content_findings(scores(0.1), spec(), 60.0)) == [("content_inverted", "reject")]
    assert codes(content_findings(scores(0.4), spec(), 60.0)) == [("content_uncertain", "warn")]
    assert codes(content_findings(scores(distance=11), spec(), 60.0)) == [
        ("out_of_distribution", "reject")]
    assert codes(content_findings(scores(distance=9), spec(), 60.0)) == [("unusual_image", "warn")]
    assert codes(content_findings(scores(mirrored=0.95), spec(), 60.0)) == [
        ("content_mirrored", "warn")]
    found = content_findings(scores(0.1), spec(), 60.0)[0]
    assert found.score == pytest.approx(0.72) and "inverted grey scale" in found.message


def test_a_known_age_decides_whether_the_patient_is_a_child() -> None:
    assert codes(content_findings(scores(child=0.95), spec(), None)) == [
        ("content_child", "reject")]
    assert content_findings(scores(child=0.95), spec(), 45.0) == []
    assert codes(content_findings(scores(child=0.95), spec(), float("nan"))) == [
        ("content_child", "reject")]


def test_card_checks_the_class_order() -> None:
    with pytest.raises(ValueError, match="frontal_chest"):
        spec(classes=("lateral", "frontal_chest"))  # type: ignore[arg-type]


def test_refusals_in_the_prediction_path(tiny: Path) -> None:
    model = XRayAge.load(tiny)
    lateral = model.predict(png(0.95), age_years=50.0)
    assert lateral.xray_age is None and lateral.qc_status is QualityStatus.REJECT
    assert "content_lateral" in lateral.qc_reasons and lateral.model is not None
    record = lateral.to_record()
    assert record["xray_age"] is None and "content_lateral" in record["qc_reasons"]
    child = model.predict(png(0.08))
    assert child.xray_age is None and "content_child" in child.qc_reasons
    assert model.predict(png(0.08), age_years=50.0).xray_age is not None  # the age decides
    odd = model.predict(png(0.0, checker=True), age_years=50.0)
    assert odd.xray_age is None and "out_of_distribution" in odd.qc_reasons
    fine = model.predict(png(0.5), age_years=50.0)
    assert fine.xray_age is not None and not any(c.startswith("content") for c in fine.qc_reasons)


def test_the_user_can_relax_a_refusal(tiny: Path) -> None:
    relaxed = XRayAge.load(tiny, allow={"content_lateral"})
    est = relaxed.predict(png(0.95), age_years=50.0)
    assert est.xray_age is not None and est.qc_status is QualityStatus.WARN
    finding = next(f for f in est.quality.findings if f.code == "content_lateral")
    assert finding.status is QualityStatus.WARN and "allowed" in finding.message


def test_ray_style_batches_and_evaluate_apply_the_same_checks(tiny: Path,
                                                              tmp_path: Path) -> None:
    model = XRayAge.load(tiny)
    items = [PredictInput(png(v, seed=i), f"{i}.png", age_years=40.0)
             for i, v in enumerate((0.5, 0.95, 0.45))]
    spec_ = model.card.preprocessing
    shipped = [Prepared.from_metadata(json.loads(json.dumps(p.metadata())), p.tensor)
               for p in (prepare(i, spec_) for i in items)]
    remote = [e.to_record() for e in estimate_batches(model.model, shipped, batch_size=2)]
    assert remote == [e.to_record() for e in model.predict_many(items)]
    for item in items:
        (tmp_path / item.name).write_bytes(item.source)  # type: ignore[arg-type]
    (tmp_path / "m.csv").write_text("path,age_years,view\n" + "".join(
        f"{i.name},40,PA\n" for i in items))
    result = evaluate(str(tmp_path / "m.csv"), model=tiny)
    assert result.metrics["n"] == 2 and result.problems[0]["reason"] == "content_lateral"
    assert evaluate(str(tmp_path / "m.csv"), model=tiny, qc=False).metrics["n"] == 3


def test_a_model_without_content_checks_is_unchanged(tmp_path: Path) -> None:
    plain = XRayAge.load(build_tiny_model(tmp_path / "plain"))
    assert plain.model.content is None
    assert plain.predict(png(0.95), age_years=50.0).xray_age is not None


def test_card_round_trip_keeps_the_content_checks(tiny: Path) -> None:
    card = ModelCard.load(tiny)
    assert card.content_checks is not None
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.content_checks == card.content_checks


BUNDLED_QC = ModelCard.load(Path(__file__).parents[1] / "src" / "xrayage" / "models"
                            / "xrayage-default").content_checks


@pytest.mark.data
@pytest.mark.skipif(BUNDLED_QC is None, reason="the bundled model has no content checks")
def test_bundled_model_refuses_what_it_must_not_judge() -> None:
    """A few files of each qc/ category (the graph saw them in training: this checks the
    wiring, the honest out-of-fold rates are in the card and docs/quality.md)."""
    import csv

    with open(SHARED_DATA / "qc" / "manifest.csv", newline="") as handle:
        qc = [r for r in csv.DictReader(handle) if r["path"].endswith(".png")]
    model = XRayAge.load()
    for category in ("lateral", "other_body_part", "not_radiograph"):
        paths = [str(SHARED_DATA / "qc" / r["path"]) for r in qc if r["category"] == category][:4]
        refused = [e.xray_age is None for e in model.predict(paths)]
        assert sum(refused) >= 3, (category, refused)
    adults = [r for r in manifest_rows("nih_cxr14") if float(r["age_years"]) >= 18][:12]
    ests = model.predict([str(SHARED_DATA / r["path"]) for r in adults])
    assert sum(e.xray_age is not None for e in ests) >= 11
