"""Linear probe (frozen backbone, closed-form ridge head) and feature taps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the 'train' extra")

from xrayage.cli.main import main  # noqa: E402
from xrayage.cohort.table import read_predictions  # noqa: E402
from xrayage.train.model import AgeNet  # noqa: E402
from xrayage.train.probe import choose_alpha, crossfit_ridge, set_head, solve_ridge  # noqa: E402

from .conftest import write_nih_subset  # noqa: E402


def test_taps_join_the_head_and_keep_the_cam_exact() -> None:
    torch.manual_seed(0)
    net = AgeNet("resnet18", 1, (3, 4), taps=["layer2", "layer3.0"], image_size=64).eval()
    assert net.channels == [256, 512, 128, 256]
    with torch.no_grad():
        net.head.weight.normal_()
        age, _, cam = net.forward_with_cam(torch.randn(2, 1, 64, 64))
    torch.testing.assert_close(cam.mean((1, 2)) + net.age_bias(), age, atol=1e-3, rtol=1e-5)
    with pytest.raises(ValueError, match="not a module"):
        AgeNet("resnet18", 1, (2,), taps=["layer4"])  # after the last level: not built


def test_ridge_head_reproduces_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 12))
    y = 50 + x @ rng.normal(size=12) * 3 + rng.normal(0, 0.5, 120)
    fold = np.arange(120) // 2 % 4  # two images per patient, patients dealt to 4 folds
    alpha, oof = choose_alpha(x, y, fold, alphas=(1e-3, 1.0, 1e4))
    assert alpha < 1e4 and np.abs(oof - y).mean() < 1.0
    net = AgeNet("resnet18", 1, init_age=50, age_scale=10)
    lin = torch.nn.Linear(12, 1)
    net.head = lin
    set_head(net, x, y, 1e-6)
    pred = (lin(torch.from_numpy(x).float()).squeeze(1) * 10 + 50).detach().numpy()
    ols = np.linalg.lstsq(np.c_[x, np.ones(120)], y, rcond=None)[0]
    np.testing.assert_allclose(pred, np.c_[x, np.ones(120)] @ ols, atol=1e-3)


@pytest.mark.parametrize("shape", [(40, 300), (300, 40)])
def test_ridge_solution_in_primal_and_dual_form(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=shape), rng.normal(size=shape[0])
    for alpha, coef in zip((0.01, 30.0), solve_ridge(x, y, (0.01, 30.0)), strict=True):
        exact = np.linalg.solve(x.T @ x + alpha * np.eye(shape[1]), x.T @ y)
        np.testing.assert_allclose(coef, exact, atol=1e-8)


def test_dual_ridge_in_column_chunks_is_the_ridge_on_standardised_features(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from xrayage.train import probe

    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(50, 230)).astype(np.float32)  # float32, as extracted
    y = 40 + x[:, :4].astype(np.float64) @ np.array([3.0, -2.0, 1.0, 2.0])
    rows = np.arange(0, 50, 2)
    mean, sd = x[rows].astype(np.float64).mean(0), x[rows].astype(np.float64).std(0)
    z = (x[rows] - mean) / sd
    exact = np.linalg.solve(z.T @ z + 5.0 * np.eye(230), z.T @ (y[rows] - y[rows].mean())) / sd
    monkeypatch.setattr(probe, "GRAM_CHUNK", 17)  # chunks that do not divide the columns
    weight, bias = probe.fit_ridge(x, y[rows], 5.0, rows=rows)
    np.testing.assert_allclose(weight, exact, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x @ weight + bias, x @ exact + y[rows].mean() - exact @ mean,
                               atol=1e-3)


def test_grid_probes_merge_into_one_head_on_the_finest_grid(tmp_path: Path) -> None:
    from xrayage.cells import coarsen_features, finer_grid_weights
    from xrayage.train.probe import merge_grid_probes

    torch.manual_seed(0)
    nets = {g: AgeNet("resnet18", 1, (2, 3), grid=g, image_size=64, init_age=a,
                      age_scale=s).eval()
            for g, a, s in ((2, 50.0, 10.0), (4, 45.0, 12.0))}  # other units per probe
    nets[4].backbone.load_state_dict(nets[2].backbone.state_dict())  # one frozen backbone
    paths = []
    for g, net in nets.items():
        with torch.no_grad():
            net.head.weight.normal_(0, 0.05)
            net.head.bias.fill_(0.3 * g)
        hp = {"backbone": "resnet18", "feature_levels": (2, 3), "taps": None, "spec": None,
              "grid": g}
        paths.append(tmp_path / f"g{g}.ckpt")
        torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                    "hyper_parameters": hp}, paths[-1])
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        feats = nets[2].features(x)
        coarse, fine = nets[2].pool(feats).double(), nets[4].pool(feats).double()
        w = torch.from_numpy(finer_grid_weights(nets[2].head.weight[0].double().numpy(), 2, 4))
        torch.testing.assert_close(fine @ w, coarse @ nets[2].head.weight[0].double())
        np.testing.assert_allclose(coarsen_features(fine.numpy(), 4, 2), coarse.numpy(),
                                   rtol=1e-6, atol=1e-9)
        expected = (nets[2](x)[0] + nets[4](x)[0]) / 2
        merged = AgeNet("resnet18", 1, (2, 3), grid=4, image_size=64).eval()
        state = torch.load(merge_grid_probes(paths, tmp_path / "m.ckpt"), weights_only=True)
        merged.load_state_dict({k[4:]: v for k, v in state["state_dict"].items()})
        age, _, cam = merged.forward_with_cam(x)
    torch.testing.assert_close(age, expected, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(cam.mean((1, 2)) + merged.age_bias(), age, atol=1e-3, rtol=1e-6)
    with pytest.raises(ValueError, match="not a coarsening"):
        finer_grid_weights(np.zeros(9), 3, 4)


def test_content_graph_retargeted_to_a_finer_grid_scores_the_same() -> None:
    ort = pytest.importorskip("onnxruntime")
    from xrayage.train.onnx_graph import content_graph, retarget_content_graph

    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.normal(size=(4, 5, 12, 12)))  # 5 channels
    by_grid = {g: torch.nn.functional.adaptive_avg_pool2d(maps, g).flatten(1).numpy()
               for g in (3, 6)}
    graph = content_graph(mu=rng.normal(size=5), sd=rng.uniform(1, 2, 5),
                          a=rng.normal(size=(5, 4)), b=rng.normal(size=4),
                          ood_mu=rng.normal(size=5), ood_basis=rng.normal(size=(5, 2)),
                          resid_scale=2.0, cells=9)

    def scores(model: object, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString())  # type: ignore[attr-defined]
        return session.run(["scores"], {"features": x.astype(np.float32)})[0]

    np.testing.assert_allclose(scores(retarget_content_graph(graph, 36), by_grid[6]),
                               scores(graph, by_grid[3]), rtol=1e-5, atol=1e-5)
    kept = content_graph(mu=np.zeros(5), sd=np.ones(5), a=np.zeros((5, 1)), b=np.zeros(1),
                         ood_mu=np.zeros(5), ood_basis=np.zeros((5, 1)), resid_scale=1.0,
                         pool="grid")
    with pytest.raises(ValueError, match="refit"):
        retarget_content_graph(kept, 36)


def test_ridge_views_need_the_ridge_head(tmp_path: Path) -> None:
    from xrayage.train.fit import TrainConfig, train_model

    with pytest.raises(ValueError, match="ridge head only"):
        train_model(TrainConfig(data=["manifest:none.csv"], out=str(tmp_path), ridge_views=2))
    with pytest.raises(ValueError, match="ridge head only"):
        train_model(TrainConfig(data=["manifest:none.csv"], out=str(tmp_path),
                                ridge_crossfit=True))


def test_augmented_views_train_but_are_never_scored() -> None:
    rng = np.random.default_rng(0)
    n, copies = 60, 3
    x = rng.normal(size=(n, 400))  # noise: nothing to learn, more features than images
    y = rng.normal(50, 10, n)
    fold = np.arange(n) % 5
    xs, ys, scored = np.tile(x, (copies, 1)), np.tile(y, copies), np.arange(n * copies) < n
    alphas = (1e-6, 1e-3, 1.0)
    # every view keeps its image's fold: no view of a scored image is in its training set
    _, oof = choose_alpha(xs, ys, np.tile(fold, copies), alphas, scored)
    assert oof.shape == (n,) and np.abs(oof - y).mean() > 0.5 * y.std()
    # control: views dealt to other folds leak their image, and the CV score shows it
    leaky = np.concatenate([fold, (fold + 1) % 5, (fold + 2) % 5])
    _, oof = choose_alpha(xs, ys, leaky, alphas, scored)
    assert np.abs(oof - y).mean() < 0.1 * y.std()


def test_crossfit_is_patient_disjoint_and_nested() -> None:
    rng = np.random.default_rng(3)
    n, copies = 120, 3
    patients = [f"p{i // 2}" for i in range(n)]  # two images per patient
    x = rng.normal(size=(n, 30))
    # signal: the age is a linear function of the features, which cross-fitting recovers
    y = 50 + x[:, :5] @ np.array([4.0, -3.0, 2.0, 3.0, -2.0]) + rng.normal(0, 1, n)
    oof, alphas = crossfit_ridge(np.tile(x, (copies, 1)), y, patients, copies)
    assert oof.shape == (n,) and len(alphas) == 5
    assert np.abs(oof - y).mean() < 0.5 * np.abs(y - np.median(y)).mean()
    # noise: a patient's second image and every view carry its label; any of them in a
    # training fold would let a small penalty memorise it, and the score would show it
    twin = np.repeat(rng.normal(size=(n // 2, 300)), 2, axis=0)
    noise = np.repeat(rng.normal(50, 10, n // 2), 2)
    oof, _ = crossfit_ridge(np.tile(twin, (copies, 1)), noise, patients, copies)
    assert np.abs(oof - noise).mean() > 0.6 * np.abs(noise - np.median(noise)).mean()


@pytest.mark.data
@pytest.mark.slow
def test_probe_train_export_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_nih_subset(tmp_path, 60)
    run = tmp_path / "run"
    assert main(["train", "--data", f"manifest:{manifest}", "--out", str(run),
                 "--backbone", "resnet18", "--image-size", "64", "--feature-levels", "3,4",
                 "--taps", "layer2", "--grid", "2", "--head", "ridge", "--ridge-views", "1",
                 "--ridge-crossfit", "--val-fraction", "0.25", "--num-workers", "0",
                 "--no-progress"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["head"] == "ridge" and info["probe_alpha"] > 0 and info["val_images"] > 0
    assert info["probe_views"] == 2 and len(info["probe_crossfit_alphas"]) == 5
    with open(run / "probe_oof.csv", newline="") as handle:
        oof = list(csv.DictReader(handle))
    assert len(oof) == info["train_images"] and all(float(r["xray_age"]) > 0 for r in oof)
    assert {r["fold"] for r in oof} == {"0", "1", "2", "3", "4"}
    folds_of = {}
    for r in oof:  # patient-disjoint folds
        assert folds_of.setdefault(r["patient_id"], r["fold"]) == r["fold"]
    _, provenance = read_predictions(run / "probe_oof.csv")
    assert provenance.status == "out-of-fold" and provenance.details["views"] == 1
    # the corrected gap is uncorrelated with age, as the pooled bias correction makes it
    corrected = np.array([float(r["age_gap_corrected"]) for r in oof])
    ages = np.array([float(r["age_years"]) for r in oof])
    assert abs(np.corrcoef(corrected, ages)[0, 1]) < 0.05
    assert info["probe_crossfit_mae"] == pytest.approx(
        np.mean([abs(float(r["xray_age"]) - float(r["age_years"])) for r in oof]))
    model_dir = tmp_path / "model"
    assert main(["export", str(run / "checkpoints" / "probe.ckpt"), "--out", str(model_dir)]) == 0
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["extra"]["taps"] == ["layer2"] and "ridge" in card["architecture"]
    assert card["extra"]["grid"] == 2 and "2x2 grid pooling" in card["architecture"]
    # the out-of-fold predictions calibrate the model
    assert main(["calibrate", str(model_dir), str(run / "probe_oof.csv"), "--in-place"]) == 0
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["conformal"]["n"] == len(oof)
    capsys.readouterr()
    assert main(["predict", str(manifest), "--model", str(model_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 60 and all(r["error"] is None for r in rows)
