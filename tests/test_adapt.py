"""Site adaptation (``xrayage adapt``): recipes, graph surgery, the model directory written.

Unit tests use a tiny ONNX model with a real linear head on exported features (built
here: 8 x 8 cell means -> Gemm -> scale and shift, a CAM from a scaled copy of the head's
weights, as in the bundled model), and the tiny model of ``onnx_factory`` without a head
(the recalibration-only path). One slow test adapts the bundled model to real covid_idc
images.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage.adapt import (
    Adaptation,
    Recipe,
    adapt,
    candidates,
    choose,
    cv_predictions,
    find_linear_head,
    fit_prior,
    fit_recipes,
    nested_oof,
)
from xrayage.card import (
    BiasCorrection,
    ConformalCalibration,
    ModelCard,
    PreprocessSpec,
    sha256_file,
)
from xrayage.folds import assign_folds
from xrayage.model import AgeModel
from xrayage.pipeline import PredictInput
from xrayage.predict import XRayAge

from .onnx_factory import build_tiny_model

onnx = pytest.importorskip("onnx")
SIZE = 64
SCALE, SHIFT = 15.0, 50.0


def build_linear_model(directory: Path, weight: np.ndarray, bias: float) -> Path:
    """A model whose age is ``SCALE * (features @ weight + bias) + SHIFT`` over the 64
    8 x 8 cell means of the input; weights stored fp16 behind a Cast (like the bundled
    model); ``cam`` is the features times a copy of the weights times ``64 * SCALE``, so
    ``mean(cam) + cam_bias == age``."""
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    w16 = weight.astype(np.float16).reshape(1, 64)
    cam_w = (weight.astype(np.float64) * SCALE * 64).astype(np.float16)
    inits = [numpy_helper.from_array(w16, "head.weight__fp16"),
             numpy_helper.from_array(np.array([bias], np.float32), "head.bias"),
             numpy_helper.from_array(cam_w, "cam.weight__fp16"),
             numpy_helper.from_array(np.array(SCALE, np.float32), "scale"),
             numpy_helper.from_array(np.array(SHIFT, np.float32), "shift"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "grid")]
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8],
                         strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Identity", ["flat"], ["features"]),
        helper.make_node("Cast", ["head.weight__fp16"], ["head.weight"], to=1),
        helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["g"], transB=1),
        helper.make_node("Squeeze", ["g", "axis1"], ["g1"]),
        helper.make_node("Mul", ["g1", "scale"], ["g2"]),
        helper.make_node("Add", ["g2", "shift"], ["age"]),
        helper.make_node("Cast", ["cam.weight__fp16"], ["cam.weight"], to=1),
        helper.make_node("Mul", ["flat", "cam.weight"], ["cam_flat"]),
        helper.make_node("Reshape", ["cam_flat", "grid"], ["cam"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("age", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 8, 8]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, directory / "model.onnx")
    card = ModelCard(
        name="tiny-linear", version="1", architecture="cell means -> linear",
        preprocessing=PreprocessSpec(image_size=SIZE, mean=(0.0,), std=(1.0,)),
        onnx_sha256=sha256_file(directory / "model.onnx"),
        outputs={"age": "age", "cam": "cam", "features": "features"},
        bias_correction=BiasCorrection(slope=0.6, intercept=20.0, n=100),
        conformal=ConformalCalibration(coverage=0.9, quantile=12.0, n=100),
        extra={"cam_bias": SCALE * bias + SHIFT})
    card.save(directory)
    return directory


def cells(rng: np.random.Generator) -> np.ndarray:
    """An 8 x 8 grid of cell intensities of a synthetic film."""
    return rng.uniform(0.25, 0.75, (8, 8))


def film(path: Path, c: np.ndarray) -> Path:
    """Write the cells as a 256 x 256 PNG (the model's 64 x 64 input keeps the cell means)."""
    Image.fromarray(np.round(np.kron(c, np.ones((32, 32))) * 255).astype(np.uint8)).save(path)
    return path


def write_site(directory: Path, n: int, seed: int = 0, *, noise: bool = False,
               effect: bool = True, extra: list[dict[str, str]] | None = None) -> Path:
    """A site manifest of `n` PNGs (two per patient). Their age is the tiny model's
    reading plus a site effect the model misses (a bias and one cell's weight), unless
    `noise` (ages unrelated to the images) or not `effect` (the model's reading)."""
    rng = np.random.default_rng(seed)
    w = np.full(64, 1.0 / 64)
    rows = []
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = cells(rng)
        path = film(directory / f"img{i}.png", c)
        base = SCALE * (c.reshape(-1) @ w * 4 - 2) + SHIFT  # what the model reads
        age = (rng.uniform(20, 85) if noise else
               base + effect * (-6.0 + 40.0 * (c[0, 0] - 0.5) + 20.0 * (c[7, 7] - 0.5))
               + rng.normal(0, 0.5))
        rows.append({"path": str(path), "patient_id": f"p{i // 2}",
                     "age_years": f"{max(age, 18.5):.2f}", "sex": "F", "view": "PA"})
    rows += extra or []
    manifest = directory / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "patient_id", "age_years", "sex", "view"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_linear_model(tmp_path_factory.mktemp("base"), np.full(64, 4.0 / 64), -2.0)


@pytest.fixture(scope="module")
def adapted(linear_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Adaptation:
    root = tmp_path_factory.mktemp("site")
    child = film(root / "child.png", cells(np.random.default_rng(99)))
    manifest = write_site(root / "site", 110, extra=[
        {"path": str(child), "patient_id": "kid", "age_years": "9", "sex": "M",
         "view": "PA"}])
    return adapt(manifest, root / "adapted", model=linear_model, threads=1,
                 min_ridge_images=100)


# ----------------------------------------------------------------------- recipes


def test_candidates_start_with_no_change_and_recalibration() -> None:
    assert [r.kind for r in candidates(False)] == ["base", "shift", "recal"]
    ridge = [r for r in candidates(True) if r.kind == "ridge"]
    assert ridge and {r.anchor for r in ridge} == {"shift", "recal"}
    assert math.isinf(Recipe("base").lam) and Recipe("base").to_dict()["lambda"] is None


def test_ridge_recovers_a_site_effect_and_base_stays_exact() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 30))
    w0 = rng.normal(size=30)
    base = x @ w0 + 50
    y = base + 3 * x[:, 0] - 4 + rng.normal(0, 0.1, 120)
    recipes = candidates(True)
    fitted = fit_recipes(x, y, base, recipes)
    assert np.allclose(fitted[Recipe("base")].predict(x, base), base)
    shift = fitted[Recipe("shift")]
    assert shift.a == pytest.approx(np.mean(y - base))
    best = min((r for r in recipes if r.kind == "ridge"),
               key=lambda r: np.abs(fitted[r].predict(x, base) - y).mean())
    assert np.abs(fitted[best].predict(x, base) - y).mean() < 0.5
    # the update is a linear head: weights and bias from the base head's
    w, b = fitted[best].head(w0, 50.0)
    assert np.allclose(x @ w + b, fitted[best].predict(x, base))


@pytest.mark.parametrize("n", [20, 60])
def test_never_worse_than_base_on_the_sites_own_cv(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 40))
    base = x @ rng.normal(size=40) + 50
    y = rng.uniform(20, 80, n)  # ages unrelated to anything the model sees
    patients = [f"p{i // 2}" for i in range(n)]
    recipe, cv_mae, oof = choose(x, y, base, patients, candidates(True))
    base_mae = float(np.abs(base - y).mean())
    assert cv_mae[Recipe("base")] == pytest.approx(base_mae)
    assert np.abs(oof - y).mean() <= base_mae + 1e-12
    assert cv_mae[recipe] <= base_mae + 1e-12


def test_nested_oof_chooses_on_inner_folds_only() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 10))
    base = x @ rng.normal(size=10) + 50
    y = base + 2 * x[:, 1] - 3
    patients = [f"p{i // 3}" for i in range(60)]
    nested = nested_oof(x, y, base, patients, candidates(True))
    assert len(nested.chosen) == 5 and np.isfinite(nested.oof).all()
    assert np.array_equal(nested.fold, assign_folds(patients, 5, ages=y, seed=0))
    assert np.abs(nested.oof - y).mean() < np.abs(base - y).mean()
    covered = (nested.lower <= y) & (y <= nested.upper)
    assert 0.5 <= covered.mean() <= 1.0
    # the CV of all recipes over the same folds gives the base model unchanged
    assert np.allclose(cv_predictions(x, y, base, nested.fold, [Recipe("base")])[0], base)


def test_pooled_ridge_is_one_ridge_on_the_training_and_the_site_images() -> None:
    rng = np.random.default_rng(0)
    d = 300
    x_t = rng.normal(2.0, 1.5, (80, d)).astype(np.float32)
    w = np.zeros(d)
    w[:5] = [3, -2, 1, 2, 1]
    y_t = 50 + x_t @ w + rng.normal(0, 1, 80)
    x_s = rng.normal(2.5, 1.2, (30, d)).astype(np.float32)
    y_s = 45 + x_s @ w + 2 * x_s[:, 7]  # the site: another intercept and one more weight
    prior = fit_prior(x_t, y_t, [f"p{i // 2}" for i in range(80)])
    assert prior.alpha > 0 and prior.images == 80 and prior.patients == 40
    alpha = 1.7 * prior.alpha
    weight, bias = prior.pooled(x_s, y_s, alpha)
    # directly: [Z_t 1 0; Z_s 0 1] [w; c_t; c_s] ≈ [y_t; y_s], only w penalised
    z_t, z_s = (x_t - prior.mean) / prior.sd, (x_s - prior.mean) / prior.sd
    a = np.block([[z_t, np.ones((80, 1)), np.zeros((80, 1))],
                  [z_s, np.zeros((30, 1)), np.ones((30, 1))]])
    sol = np.linalg.solve(a.T @ a + np.diag(np.r_[np.full(d, alpha), 0, 0]),
                          a.T @ np.r_[y_t, y_s])
    direct = sol[:d] / prior.sd
    np.testing.assert_allclose(weight, direct, atol=1e-5)
    assert bias == pytest.approx(sol[d + 1] - direct @ prior.mean, abs=1e-3)
    # as a recipe: the update is that head
    pooled = Recipe("pooled", lam=1.7)
    recipes = [Recipe("base"), pooled]
    assert pooled.label == "pooled(α×1.7)"
    assert [r.label for r in candidates(True, prior=True)] == [
        "base", "shift", "recal", "pooled(α×1)"]
    assert not any(r.kind == "pooled" for r in candidates(True))
    base = x_s @ w + 50
    fitted = fit_recipes(x_s, y_s, base, recipes, prior)
    np.testing.assert_allclose(fitted[pooled].predict(x_s, base), x_s @ direct + (
        sol[d + 1] - direct @ prior.mean), atol=1e-3)
    with pytest.raises(ValueError, match="prior"):
        fit_recipes(x_s, y_s, base, recipes)


def test_pooled_ridge_of_a_finer_grid_model_reads_its_3_x_3_means() -> None:
    from xrayage.cells import coarsen_features

    rng = np.random.default_rng(1)
    fine_t, fine_s = rng.normal(size=(40, 4 * 36)), rng.normal(size=(12, 4 * 36))
    y_t, y_s = rng.uniform(20, 80, 40), rng.uniform(20, 80, 12)
    patients = [f"p{i // 2}" for i in range(40)]
    prior = fit_prior(fine_t, y_t, patients, grid=6)
    coarse = fit_prior(coarsen_features(fine_t, 6, 3), y_t, patients, grid=3)
    assert (prior.grid, prior.cells) == (6, 3) and prior.alpha == pytest.approx(coarse.alpha)
    w_fine, b_fine = prior.pooled(fine_s, y_s, prior.alpha)
    w_coarse, b_coarse = coarse.pooled(coarsen_features(fine_s, 6, 3), y_s, coarse.alpha)
    assert w_fine.shape == (4 * 36,) and b_fine == pytest.approx(b_coarse, abs=1e-3)
    np.testing.assert_allclose(fine_s @ w_fine, coarsen_features(fine_s, 6, 3) @ w_coarse,
                               atol=1e-3)


# ----------------------------------------------------------------------- the graph


def test_find_linear_head_reads_weights_bias_and_cam_copy(linear_model: Path) -> None:
    card = ModelCard.load(linear_model)
    head = find_linear_head(onnx.load(str(linear_model / "model.onnx")), card)
    assert head is not None
    assert np.allclose(head.weight, SCALE * 4.0 / 64, rtol=1e-3)
    assert head.bias == pytest.approx(SCALE * -2.0 + SHIFT)
    assert [name for name, _ in head.cam] == ["cam.weight__fp16"]
    assert head.cam[0][1] == pytest.approx(SCALE * 64, rel=1e-3)


def test_no_linear_head_without_features(tmp_path: Path) -> None:
    d = build_tiny_model(tmp_path / "tiny")
    assert find_linear_head(onnx.load(str(d / "model.onnx")), ModelCard.load(d)) is None


# ----------------------------------------------------------------------- adapt


def test_adapt_writes_a_model_directory_like_any_other(adapted: Adaptation,
                                                       linear_model: Path) -> None:
    out = adapted.directory
    assert {"model.onnx", "model_card.json", "report.html", "summary.json"} <= {
        p.name for p in out.iterdir()}
    card = ModelCard.load(out)
    info = card.extra["adaptation"]
    base = ModelCard.load(linear_model)
    assert info["base_model"] == {"name": base.name, "version": base.version,
                                  "onnx_sha256": base.onnx_sha256}
    assert info["local"]["images"] == 110 and info["local"]["patients"] == 55
    assert info["local"]["excluded"] == {"child": 1}
    assert info["linear_head"] and adapted.recipe.kind == "ridge"
    assert card.metrics["site_after"]["mae"] < card.metrics["site_before"]["mae"] - 2
    assert card.conformal is not None and card.conformal.n == 110
    assert card.bias_correction is not None and card.bias_correction.n == 110
    assert info["verification"]["max_abs_age_diff"] < 1e-3
    # no image path or patient id of the site anywhere in what is written
    for name in ("model_card.json", "summary.json", "report.html"):
        text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", (out / name).read_text())
        assert "img1.png" not in text and str(out.parent) not in text
        assert '"p1"' not in text and "kid" not in text


def test_adapted_onnx_age_is_the_fitted_head_and_cam_follows(adapted: Adaptation) -> None:
    model = AgeModel(adapted.directory, threads=1)
    site = adapted.site
    assert site.features is not None
    update = fit_recipes(site.features, site.age, site.base, [adapted.recipe])[adapted.recipe]
    x = np.random.default_rng(5).uniform(0.25, 0.75, (6, 1, SIZE, SIZE)).astype(np.float32)
    out = model.run(x, cam=True, features=True)
    assert out.features is not None and out.cam is not None
    base_age = SCALE * (out.features.astype(np.float64) @ np.full(64, 4.0 / 64) - 2) + SHIFT
    expected = update.predict(out.features, base_age)
    assert np.abs(out.age - expected).max() < 1e-2  # fp16 base weights in `base_age`
    cam_bias = model.card.extra["cam_bias"]
    assert np.abs(out.cam.mean(axis=(1, 2)) + cam_bias - out.age).max() < 1e-3


def test_predict_runs_on_the_adapted_directory(adapted: Adaptation, tmp_path: Path) -> None:
    path = film(tmp_path / "x.png", cells(np.random.default_rng(7)))
    est = XRayAge.load(adapted.directory).predict(str(path), age_years=50.0, heatmap=True)
    assert est.xray_age is not None and est.heatmap is not None
    assert est.age_gap_corrected is not None


def test_summary_and_report(adapted: Adaptation) -> None:
    summary = json.loads((adapted.directory / "summary.json").read_text())
    for side in ("before", "after"):
        m = summary[side]
        assert {"mae", "bias", "slope", "r", "ci95", "interval_coverage"} <= set(m)
        assert m["ci95"]["mae"][0] <= m["mae"] <= m["ci95"]["mae"][1]
    assert summary["gain"]["mae_gain"] > 0 and summary["gain"]["ci95"][0] > 0
    assert not summary["warnings"]
    html = (adapted.directory / "report.html").read_text()
    assert "Before and after" in html and "data:image/png;base64," in html


def test_recalibration_only_for_a_model_without_a_linear_head(tmp_path: Path) -> None:
    base = build_tiny_model(tmp_path / "tiny")
    manifest = write_site(tmp_path / "site", 40, seed=3)
    result = adapt(manifest, tmp_path / "out", model=base, threads=1, report=False)
    card = ModelCard.load(result.directory)
    info = card.extra["adaptation"]
    assert not info["linear_head"] and "recalibration only" in info["method"]
    assert result.recipe.kind in ("base", "shift", "recal")
    assert any("recalibration only" in w for w in result.warnings)
    assert info["verification"]["max_abs_age_diff"] < 1e-3
    est = XRayAge.load(result.directory).predict(
        str(tmp_path / "site" / "img0.png"), age_years=50.0, heatmap=True)
    assert est.xray_age is not None


def test_adapt_refuses_too_few_patients_and_a_used_directory(linear_model: Path,
                                                             tmp_path: Path) -> None:
    manifest = write_site(tmp_path / "site", 12)
    with pytest.raises(ValueError, match="at least 10 patients"):
        adapt(manifest, tmp_path / "out", model=linear_model, threads=1)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        adapt(manifest, tmp_path / "used", model=linear_model, threads=1)


def test_adapt_with_the_training_images_as_prior(linear_model: Path, tmp_path: Path) -> None:
    prior = write_site(tmp_path / "train", 60, seed=8, effect=False)  # what the model read
    site = write_site(tmp_path / "site", 110, seed=9)
    result = adapt(site, tmp_path / "out", model=linear_model, threads=1, report=False,
                   min_ridge_images=100, prior=prior)
    info = ModelCard.load(result.directory).extra["adaptation"]
    assert info["prior"]["images"] == 60 and info["prior"]["patients"] == 30
    assert set(info["cv_mae"]) == {"base", "shift", "recal", "pooled(α×1)"}
    assert "pooled with the base model's training images" in info["method"]
    assert info["verification"]["max_abs_age_diff"] < 1e-3
    assert info["after"]["mae"] < info["before"]["mae"] - 2
    text = (result.directory / "model_card.json").read_text()
    assert str(tmp_path) not in text and "img1.png" not in text


def test_cli_adapt(linear_model: Path, tmp_path: Path) -> None:
    from xrayage.cli.main import main

    manifest = write_site(tmp_path / "site", 20, seed=4, noise=True)  # 10 patients
    assert main(["adapt", str(manifest), "--model", str(linear_model), "--out",
                 str(tmp_path / "out"), "--threads", "1"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # ages unrelated to the images: never worse than the base model on the site's CV
    assert summary["cv_mae"][summary["recipe"]["label"]] <= summary["cv_mae"]["base"]
    assert summary["local"]["images"] == 20
    assert any("only 20 usable images" in w for w in summary["warnings"])
    assert any("no ridge update" in w for w in summary["warnings"])
    assert (tmp_path / "out" / "report.html").is_file()


# ----------------------------------------------------------------------- real data


@pytest.mark.slow
def test_adapt_bundled_model_on_covid_idc(shared_data: Path, tmp_path: Path) -> None:
    """60 real covid_idc images as a site: never worse than the bundled model on the site's
    own CV, the adapted graph computes the fitted head (and its CAM follows), and predict
    runs on the adapted directory."""
    from xrayage.adapt import load_site

    samples = load_site(f"manifest:{shared_data / 'manifest.csv'}?source=covid_idc")[:60]
    result = adapt(samples, tmp_path / "adapted", threads=2, report=False,
                   min_ridge_images=0)  # the ridge candidates too, on 60 images
    info = ModelCard.load(result.directory).extra["adaptation"]
    assert info["cv_mae"][result.recipe.label] <= info["cv_mae"]["base"]
    assert info["linear_head"]
    assert info["verification"]["max_abs_age_diff"] < 1e-3
    assert info["verification"]["max_abs_cam_mean_diff"] < 0.05
    assert info["local"]["images"] + sum(info["local"]["excluded"].values()) == 60
    s = samples[result.site.index[0]]  # one the quality checks accepted
    item = PredictInput(str(s.path), "first", s.age_years, s.sex or None, s.view or None)
    est = next(XRayAge.load(result.directory).predict_many([item], heatmap=True))
    assert est.xray_age is not None and est.heatmap is not None
