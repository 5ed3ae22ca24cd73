"""The pipeline's stages, and that every entry point goes through them alike."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from xrayage.estimate import AgeEstimate, FailureKind, InputFailure
from xrayage.evaluate import evaluate, excluded
from xrayage.inputs import expand_inputs
from xrayage.pipeline import PredictInput, Prepared, estimate_batches, prepare
from xrayage.postprocess import finish
from xrayage.predict import XRayAge
from xrayage.quality import QualityStatus
from xrayage.radiograph import Radiograph
from xrayage.train.cache import decode_one

from .clinical_helpers import png_bytes
from .conftest import manifest_rows
from .onnx_factory import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def mixed_manifest(directory: Path, shared: Path) -> Path:
    """Adults and children of the shared NIH set, plus an unreadable file."""
    rows = manifest_rows("nih_cxr14")
    adults = [r for r in rows if float(r["age_years"]) >= 18][:4]
    children = [r for r in rows if float(r["age_years"]) < 18][:2]
    broken = directory / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    out = directory / "mixed.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "patient_id", "age_years", "sex", "view"])
        writer.writeheader()
        for r in adults + children:
            writer.writerow({"path": str(shared / r["path"]), "patient_id": r["patient_id"],
                             "age_years": r["age_years"], "sex": r["sex"], "view": r["view"]})
        writer.writerow({"path": str(broken), "patient_id": "x", "age_years": "50",
                         "sex": "F", "view": "PA"})
    return out


def test_evaluate_and_predict_agree_row_by_row(tmp_path: Path, shared_data: Path,
                                              tiny: Path) -> None:
    manifest = mixed_manifest(tmp_path, shared_data)
    predicted = {e.path: e for e in XRayAge.load(tiny).predict_many(expand_inputs([manifest]))}
    result = evaluate(str(manifest), model=tiny)  # a bare CSV path is a manifest
    scored = {p["path"]: p for p in result.predictions}
    problems = {p["path"]: p for p in result.problems}
    assert len(scored) == 4 and len(problems) == 3
    assert set(scored) | set(problems) == set(predicted)
    for path, est in predicted.items():
        if est.xray_age is not None:
            assert scored[path]["xray_age"] == pytest.approx(est.xray_age, abs=1e-9)
            assert scored[path]["age_years"] == est.age_years
        elif est.failure is not None:
            assert problems[path]["status"] == "failed" and est.qc_status is QualityStatus.ERROR
        else:
            assert problems[path] == {"path": path, "status": "rejected", "reason": "child"}
            assert est.qc_status is QualityStatus.REJECT and "child" in est.qc_reasons
    assert excluded(result.problems) == {"child": 2, "failed": 1}
    assert result.summary()["excluded"] == {"child": 2, "failed": 1}


def test_prepare_never_raises_and_types_the_failure() -> None:
    from xrayage.card import PreprocessSpec

    bad = prepare(PredictInput(b"not an image", "bad.bin"), PreprocessSpec(image_size=64))
    assert not bad.accepted and bad.estimate.failure is not None
    assert bad.estimate.failure.kind is FailureKind.UNSUPPORTED
    big = prepare(PredictInput(png_bytes((400, 400)), "big.png"), PreprocessSpec(image_size=64),
                  max_pixels=1000)
    assert big.estimate.failure is not None and big.estimate.failure.kind is FailureKind.TOO_LARGE
    good = prepare(PredictInput(png_bytes(), "ok.png", age_years=50.0, view="PA"),
                   PreprocessSpec(image_size=64), tta=True)
    assert good.accepted and good.tensor is not None and good.tensor.shape == (4, 1, 64, 64)
    assert good.square is not None and good.square.shape == (64, 64)
    assert good.estimate.source is not None and good.estimate.source.source_format == "png"


def test_prepared_metadata_round_trip_gives_the_same_estimate(tiny: Path) -> None:
    estimator = XRayAge.load(tiny)
    items = [PredictInput(png_bytes(seed=i), f"{i}.png", age_years=40.0 + i, view="PA")
             for i in range(3)] + [PredictInput(b"junk", "junk.bin"),
                                   PredictInput(png_bytes(), "kid.png", age_years=9.0)]
    spec = estimator.card.preprocessing
    direct = list(estimator.predict_many(items))
    shipped = [Prepared.from_metadata(json.loads(json.dumps(p.metadata())), p.tensor)
               for p in (prepare(i, spec) for i in items)]
    remote = list(estimate_batches(estimator.model, shipped, batch_size=2))
    assert [e.to_record() for e in remote] == [e.to_record() for e in direct]
    assert [e.qc_status.value for e in direct] == ["ok", "ok", "ok", "error", "reject"]


def test_finish_refuses_a_non_finite_age(tiny: Path) -> None:
    card = XRayAge.load(tiny).card
    est = finish(AgeEstimate("nan.dcm", age_years=50.0), card, float("nan"))
    assert est.xray_age is None and est.failure is not None
    assert est.failure.kind is FailureKind.NON_FINITE and est.qc_status is QualityStatus.ERROR
    record = est.to_record()
    assert record["xray_age"] is None and record["qc_status"] == "error"
    json.dumps(record, allow_nan=False)


def test_estimate_is_frozen_and_records_the_model(tiny: Path) -> None:
    est = XRayAge.load(tiny).predict(png_bytes(), age_years=50.0)
    assert est.model is not None and est.model.name == XRayAge.load(tiny).card.name
    with pytest.raises(AttributeError):
        est.xray_age = 1.0  # type: ignore[misc]
    assert InputFailure.from_dict(InputFailure(FailureKind.UNREADABLE, "x").to_dict()).kind \
        is FailureKind.UNREADABLE


def test_cache_uses_the_image_checks_only(tmp_path: Path) -> None:
    from xrayage.card import PreprocessSpec

    path = tmp_path / "kid.png"
    path.write_bytes(png_bytes())
    status, value = decode_one(str(path), PreprocessSpec(image_size=64))
    assert status == "ok" and value.dtype == np.uint8 and value.shape == (64, 64)
    rg = Radiograph(np.zeros((300, 300), np.float32))
    reject = prepare(PredictInput(rg, "blank"), PreprocessSpec(image_size=64))
    assert "blank" in reject.estimate.qc_reasons and not reject.accepted
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert decode_one(str(tmp_path / "bad.png"), PreprocessSpec(image_size=64))[0] == "failed"
