"""The XRayAge API on a tiny, exactly predictable ONNX model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage import XRayAge
from xrayage.card import ModelCard
from xrayage.errors import ModelError
from xrayage.io import read_radiograph
from xrayage.preprocess import preprocess

from .dicom_factory import make_dataset, to_bytes
from .onnx_factory import build_tiny_model, expected_age


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def png_bytes(seed: int = 0, size: tuple[int, int] = (400, 360)) -> bytes:
    arr = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_dicom_prediction_matches_model_and_card(tiny: Path) -> None:
    data = to_bytes(make_dataset())  # age 55, PA, DX chest
    est = XRayAge.load(tiny).predict(data)
    x = preprocess(read_radiograph(data), ModelCard.load(tiny).preprocessing)[None]
    assert est.xray_age == pytest.approx(float(expected_age(x)[0]), abs=1e-4)
    assert est.age_years == 55.0
    assert est.age_gap == pytest.approx(est.xray_age - 55.0)
    assert est.age_gap_corrected == pytest.approx(est.xray_age - (0.5 * 55.0 + 25.0))
    assert (est.age_interval_lower, est.age_interval_upper) == pytest.approx(
        (est.xray_age - 8.0, est.xray_age + 8.0))
    assert est.sigma == pytest.approx(5.0)
    assert est.qc_status == "ok" and est.error is None and est.heatmap is None


def test_overrides_and_heatmap_is_exact_cam(tiny: Path) -> None:
    est = XRayAge.load(tiny).predict(png_bytes(), age_years=40.0, sex="F", heatmap=True)
    assert est.age_years == 40.0 and est.qc_status == "warn"
    assert est.qc_reasons == ["view_unknown"]
    assert est.heatmap is not None and est.heatmap.shape == (8, 8)
    assert float(est.heatmap.mean()) + 20.0 == pytest.approx(est.xray_age, abs=1e-4)


def test_reject_and_error_give_no_number(tiny: Path) -> None:
    model = XRayAge.load(tiny)
    child, broken = model.predict([png_bytes(1), b"not an image"], age_years=9.0)
    assert child.qc_status == "reject" and child.qc_reasons[-1] == "child"
    assert child.xray_age is None and child.age_gap is None
    assert broken.qc_status == "error" and "not a DICOM, PNG or JPEG" in broken.error
    assert broken.xray_age is None


def test_list_order_and_batching(tiny: Path) -> None:
    sources = [png_bytes(i) for i in range(11)]
    one_by_one = [XRayAge.load(tiny, batch_size=1).predict(s, age_years=50.0) for s in sources]
    batched = XRayAge.load(tiny, batch_size=4).predict(sources, age_years=50.0)
    assert [e.xray_age for e in batched] == pytest.approx([e.xray_age for e in one_by_one])


def test_missing_calibration_gives_no_interval_or_correction(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m", conformal=False, bias=False)
    est = XRayAge.load(model_dir).predict(to_bytes(make_dataset()))
    assert est.xray_age is not None and est.age_gap is not None
    assert est.age_interval_lower is None and est.age_gap_corrected is None


def test_tta_averages_views(tiny: Path) -> None:
    data = to_bytes(make_dataset())
    plain = XRayAge.load(tiny).predict(data).xray_age
    tta = XRayAge.load(tiny, tta=True).predict(data).xray_age
    assert tta != plain and abs(tta - plain) < 2.0


def test_record_columns(tiny: Path) -> None:
    record = XRayAge.load(tiny).predict(to_bytes(make_dataset())).to_record()
    assert list(record) == ["path", "xray_age", "age_interval_lower", "age_interval_upper",
                            "age_years", "age_gap", "age_gap_corrected", "qc_status",
                            "qc_reasons", "error"]


def test_tampered_model_refused(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    with open(model_dir / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        XRayAge.load(model_dir)


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="no model"):
        XRayAge.load("no-such-model")
