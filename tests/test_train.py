"""AgeNet, augmentation, the torch-free inference path, and DDP training on two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the 'train' extra")

from xrayage.card import PreprocessSpec  # noqa: E402
from xrayage.preprocess import normalize as np_normalize  # noqa: E402
from xrayage.train.augment import AugmentConfig, augment, normalize, to_float  # noqa: E402
from xrayage.train.model import AgeNet  # noqa: E402

from .conftest import write_nih_subset  # noqa: E402


@pytest.mark.parametrize(("backbone", "levels", "size"), [
    ("resnet18", (3, 4), 64), ("efficientnet_b0", (-1,), 64), ("legacy_xception", None, 96),
])
def test_cam_is_exact(backbone: str, levels: tuple[int, ...] | None, size: int) -> None:
    torch.manual_seed(0)
    net = AgeNet(backbone, 1, levels, gaussian=True, init_age=45, age_scale=12,
                 image_size=size).eval()
    with torch.no_grad():
        net.head.weight.normal_()
        net.head.bias.fill_(0.3)
        x = torch.randn(3, 1, size, size)
        age, log_var, cam = net.forward_with_cam(x)
    assert age.shape == (3,) and log_var is not None and log_var.shape == (3,)
    assert cam.ndim == 3 and torch.isfinite(cam).all()
    torch.testing.assert_close(cam.mean((1, 2)) + net.age_bias(), age, atol=1e-3, rtol=1e-5)


def test_taps_come_in_the_order_given() -> None:
    # hooks fire in forward order; the maps (and channels) must follow `taps` instead
    net = AgeNet("resnet18", 1, (3,), taps=["layer2", "layer1"]).eval()
    with torch.no_grad():
        feats = net.features(torch.randn(1, 1, 64, 64))
    assert net.channels == [256, 128, 64]
    assert [f.shape[1] for f in feats] == [256, 128, 64] and feats[1].shape[-1] == 8


@pytest.mark.parametrize("grid", [2, 3])
def test_grid_pooling_keeps_the_cam_exact_and_the_cells_apart(grid: int) -> None:
    torch.manual_seed(0)
    net = AgeNet("resnet18", 1, (2, 3), taps=["layer2.0"], grid=grid, image_size=96).eval()
    assert net.head.in_features == sum(net.channels) * grid**2
    with torch.no_grad():
        net.head.weight.normal_()
        x = torch.randn(2, 1, 96, 96)
        age, _, cam = net.forward_with_cam(x)
        torch.testing.assert_close(cam.mean((1, 2)) + net.age_bias(), age, atol=1e-3, rtol=1e-5)
        feats = net.features(x)
        pooled = net.pool(feats)
        # the first map's top-left cell, channel 0: the mean of that cell's pixels
        h, w = feats[0].shape[-2] // grid, feats[0].shape[-1] // grid
        torch.testing.assert_close(pooled[:, 0], feats[0][:, 0, :h, :w].mean((1, 2)))
        # a weight on one cell moves the CAM only inside that cell
        net.head.weight.zero_()
        net.head.weight[0, grid * grid - 1] = 1.0  # map 0, channel 0, bottom-right cell
        _, _, cam = net.forward_with_cam(x)
    scale = cam.shape[-1] // feats[0].shape[-1]
    inside = cam[:, -h * scale:, -w * scale:]
    assert cam.abs().sum() == inside.abs().sum() > 0


def test_refuses_grids_that_do_not_divide_the_maps() -> None:
    with pytest.raises(ValueError, match="3 x 3 grid"):
        AgeNet("resnet18", 1, (3, 4), grid=3, image_size=64)  # maps 4x4 and 2x2
    net = AgeNet("resnet18", 1, (4,), grid=3).eval()
    with pytest.raises(ValueError, match="equal cells"):
        net(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="positive"):
        AgeNet("resnet18", 1, grid=0)


def test_refuses_inexact_cam_and_bad_levels() -> None:
    with pytest.raises(ValueError, match="integer multiples"):
        AgeNet("legacy_xception", 1, (0, 4), image_size=128)
    with pytest.raises(ValueError, match="out of range"):
        AgeNet("resnet18", 1, (7,))


def test_init_weights_and_freeze(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    full = timm.create_model("resnet18", pretrained=False)
    save_file(full.state_dict(), str(tmp_path / "r18.safetensors"))  # includes fc.*
    net = AgeNet("resnet18", 1, init_weights=tmp_path / "r18.safetensors")
    torch.testing.assert_close(net.backbone.conv1.weight, full.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(net.backbone.layer4[1].conv2.weight, full.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match="safetensors"):
        AgeNet("resnet18", 1, init_weights=tmp_path / "weights.pth")
    frozen = net.freeze_stages(2)
    assert frozen > 0 and not net.backbone.layer1[0].conv1.weight.requires_grad
    assert net.backbone.layer3[0].conv1.weight.requires_grad
    net.train()
    assert not net.backbone.bn1.training and net.backbone.layer3[0].bn1.training


def test_augment_and_normalize() -> None:
    spec = PreprocessSpec(image_size=32, channels=3, mean=(0.5,), std=(0.25,))
    imgs = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8)
    x = to_float(imgs)
    ref = np_normalize(imgs.numpy().astype(np.float32) / 255, spec)
    np.testing.assert_allclose(normalize(x, spec).numpy(), ref, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, AugmentConfig(), gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_inference_modules_do_not_import_torch() -> None:
    code = ("import sys, xrayage, xrayage.evaluate, xrayage.metrics, xrayage.datasets, "
            "xrayage.train.cache, xrayage.cli.main, xrayage.cli.evaluate;"
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(("option", "message"), [
    (["--backbone", "nosuchnet"], "no such timm model"),
    (["--image-size", "8"], "--image-size 8"),
    (["--data", "bogus:x"], "must be ADAPTER:PATH"),
    (["--data", "manifest:/no/such/manifest.csv"], "does not exist"),
    (["--init-weights", "/no/such.safetensors"], "no such file"),
])
def test_train_checks_every_option_before_any_work(
        tmp_path: Path, option: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from xrayage.cli.main import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,age_years\n")
    args = {"--data": f"manifest:{manifest}", "--backbone": "resnet18", "--image-size": "64"}
    args.update(dict(zip(option[::2], option[1::2], strict=True)))
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not run.exists()  # nothing built, not even the run folder


@pytest.mark.data
def test_cache_only_names_the_cache_not_a_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xrayage.cli.main import main

    manifest = write_nih_subset(tmp_path, 4)
    run = tmp_path / "run"
    assert main(["train", "--data", f"manifest:{manifest}", "--out", str(run), "--backbone",
                 "resnet18", "--image-size", "64", "--cache-only", "--no-progress",
                 "--cache-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "best checkpoint" not in out and out.startswith("cache: ")
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.data
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    manifest = write_nih_subset(tmp_path, 40)
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "xrayage"
    cmd = [str(exe), "train", "--data", f"manifest:{manifest}", "--out", str(out),
           "--backbone", "resnet18", "--image-size", "64", "--epochs", "1", "--max-steps", "3",
           "--batch-size", "4", "--num-workers", "0", "--no-progress", "--val-fraction", "0.2",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stderr + done.stdout  # Lightning's DDP rank banner
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {"state_dict", "hyper_parameters", "optimizer_states", "global_step"} <= set(last)
    assert last["global_step"] == 3
    assert any(k.startswith("net.head.") for k in last["state_dict"])
    run = json.loads((out / "run.json").read_text())
    assert run["preprocessing"]["image_size"] == 64 and (out / "split.json").is_file()


def test_lightning_lines_print_once() -> None:
    code = ("import logging; logging.basicConfig(level=logging.WARNING); "
            "import lightning.pytorch; "
            "from xrayage.train.fit import print_lightning_once; print_lightning_once(); "
            "from lightning.pytorch.utilities.rank_zero import rank_zero_info; "
            "rank_zero_info('GPU available: said once')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stderr
    assert err.count("said once") == 1, err
