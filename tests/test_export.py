"""End-to-end round trip: train -> checkpoint -> export (verified) -> ONNX evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the 'train' extra")

from xrayage.card import ModelCard, sha256_file
from xrayage.cli.main import main
from xrayage.errors import ModelError

from .conftest import MANIFEST, write_nih_subset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """Overfit resnet18 at 64 px on 72 shared NIH images (the point: the loop learns)."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    manifest = write_nih_subset(tmp, 72)
    run = tmp / "run"
    code = main(["train", "--data", f"manifest:{manifest}", "--out", str(run), "--backbone",
                 "resnet18", "--image-size", "64", "--epochs", "12", "--batch-size", "16",
                 "--lr", "3e-3", "--no-augment", "--patience", "100", "--num-workers", "0",
                 "--val-fraction", "0.15", "--seed", "0", "--no-progress",
                 "--accelerator", "cpu"])
    assert code == 0
    return run, manifest


@pytest.mark.slow
@pytest.mark.data
def test_roundtrip(trained: tuple[Path, Path], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    run, manifest = trained
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "model"
    assert main(["export", str(best), "--out", str(out)]) == 0
    card = ModelCard.load(out)
    assert card.onnx_sha256 == sha256_file(out / "model.onnx")
    assert card.outputs == {"age": "age", "cam": "cam", "features": "features"}
    assert card.preprocessing.image_size == 64 and card.preprocessing.channels == 1
    check = card.extra["verification"]
    assert check["images"] == 8 and check["max_abs_age_diff"] <= 1e-4
    assert card.training_data[0]["licence"].startswith("NIH")
    assert card.metrics["train_median_age"] is not None
    assert card.metrics["validation"]["mae"] == pytest.approx(card.metrics["best_val_mae"],
                                                             abs=1e-3)
    assert card.bias_correction is None and card.conformal is None
    capsys.readouterr()
    assert main(["evaluate", f"manifest:{manifest}", "--model", str(out), "--split", "train",
                 "--run-dir", str(run), "--json", "--plots", str(tmp_path / "plots")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result)[:8] == ["n", "mae", "rmse", "bias", "r", "r2", "icc", "mae_no_skill"]
    # the training manifest holds children: evaluate refuses them, as predict does
    assert result["n"] > 50 and result["failed"] == 0
    assert result["rejected"] == result["excluded"].get("child", 0)
    assert result["mae"] < 0.8 * result["mae_no_skill"], result  # the loop learns
    assert (tmp_path / "plots" / "scatter.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.data
def test_export_hooks_and_cam(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from xrayage.card import BiasCorrection
    from xrayage.model import AgeModel
    from xrayage.train.export import export

    run, _ = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    card = export(ckpt, tmp_path / "m", card_updates={
        "bias_correction": BiasCorrection(slope=0.8, intercept=9.0, n=10)}, val_metrics=False)
    assert ModelCard.load(tmp_path / "m").bias_correction == card.bias_correction
    model = AgeModel(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(3, 1, 64, 64)).astype(np.float32)
    out = model.run(x, cam=True)
    assert out.cam is not None and out.cam.shape == (3, 2, 2)
    np.testing.assert_allclose(out.cam.mean((1, 2)) + card.extra["cam_bias"], out.age, atol=1e-3)
    with pytest.raises(ValueError, match="no field"):
        export(ckpt, tmp_path / "m2", card_updates={"colour": 1}, val_metrics=False)


@pytest.mark.slow
@pytest.mark.data
def test_export_refuses_without_real_images(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from xrayage.train.export import export

    run, _ = trained
    copy = tmp_path / "ckpt.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", copy)
    (run / "split.json").rename(run / "split.bak")
    try:
        with pytest.raises(ModelError, match="no real image"):
            export(copy, tmp_path / "m", val_metrics=False)
    finally:
        (run / "split.bak").rename(run / "split.json")


@pytest.mark.data
def test_gaussian_export_without_training(tmp_path: Path) -> None:
    """A Gaussian-NLL model exports age, log_var and cam; ORT σ matches torch."""
    import torch
    from lightning import __version__ as pl_version

    from xrayage.card import PreprocessSpec
    from xrayage.datasets import load_dataset
    from xrayage.model import AgeModel
    from xrayage.train.export import export
    from xrayage.train.module import AgeModule

    spec = PreprocessSpec(image_size=64)
    module = AgeModule("resnet18", spec=spec.__dict__, loss="gaussian_nll", init_age=50,
                       age_scale=15).eval()
    x = torch.randn(4, 1, 64, 64)
    age, log_var = module(x)
    loss = module._loss(age, log_var, torch.full((4,), 40.0))
    assert torch.isfinite(loss)
    ckpt = tmp_path / "g.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl_version}, ckpt)
    images = [s.path for s in load_dataset(f"manifest:{MANIFEST}?source=nih_cxr14").samples[:3]]
    card = export(ckpt, tmp_path / "m", images=images, val_metrics=False)
    assert card.outputs == {"age": "age", "log_var": "log_var", "cam": "cam",
                            "features": "features"}
    out = AgeModel(tmp_path / "m").run(np.zeros((2, 1, 64, 64), np.float32), cam=True)
    assert out.sigma is not None and np.all(out.sigma > 0) and out.cam.shape == (2, 2, 2)


@pytest.mark.slow
@pytest.mark.data
def test_resume_continues_the_run(trained: tuple[Path, Path]) -> None:
    """--resume RUN/checkpoints/last.ckpt continues from its step (runs last: it extends RUN)."""
    import torch

    run, manifest = trained
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert main(["train", "--data", f"manifest:{manifest}", "--out", str(run), "--backbone",
                 "resnet18", "--image-size", "64", "--epochs", "13", "--batch-size", "16",
                 "--lr", "3e-3", "--no-augment", "--patience", "100", "--num-workers", "0",
                 "--val-fraction", "0.15", "--no-progress", "--accelerator", "cpu",
                 "--resume", str(last)]) == 0
    after = torch.load(last, map_location="cpu", weights_only=True)
    assert after["epoch"] > first["epoch"]
    assert after["global_step"] > first["global_step"]
    assert json.loads((run / "run.json").read_text())["epochs_run"] == 13


@pytest.mark.slow
@pytest.mark.data
def test_failed_verification_leaves_no_model(trained: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that fails its ORT/torch check must not be loadable (or reused by crossfit)."""
    from xrayage.train import export as export_module

    monkeypatch.setattr(export_module, "TOLERANCE_YEARS", -1.0)
    run, _ = trained
    out = tmp_path / "model"
    with pytest.raises(ModelError, match="disagree"):
        export_module.export(run / "checkpoints" / "last.ckpt", out, val_metrics=False)
    assert not (out / "model_card.json").exists()
