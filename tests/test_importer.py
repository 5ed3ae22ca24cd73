"""TorchScript import: tiny models with the RIKEN interface, round-tripped through ONNX.

The RIKEN preset must give what TorchXRayVision's ``AgeModel`` gives on the same PNG
(:func:`xrv_age_model`, its forward rebuilt in torch), within 0.01 y.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from xrayage import XRayAge
from xrayage.card import ModelCard
from xrayage.cli.main import main
from xrayage.errors import ModelError
from xrayage.importer import PRESETS, RIKEN_FILE, import_torchscript, weights_to_float16

from .conftest import MANIFEST, manifest_rows, write_nih_subset
from .shared import NEMA, NIH_DIR

torch = pytest.importorskip("torch")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _save(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


class RikenLike(torch.nn.Module):
    """(N, 3, 320, 320) -> (N, 1) years, as sensitive to fine texture as a deep network.

    The age is linear in the energy of 2x2 checkerboard filters, which 8-bit rounding
    noise raises: like the RIKEN SENet154, it reads 0.3-0.5 y older on a quantized input.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        self.conv = torch.nn.Conv2d(3, 8, 2, bias=False)
        self.conv.weight.data = checker.expand(8, 3, 2, 2) * torch.randn(8, 3, 1, 1, generator=g)
        self.fc = torch.nn.Linear(8, 1)
        self.fc.weight.data = torch.rand(1, 8, generator=g) * 200
        self.fc.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.conv(x) ** 2).mean(dim=(2, 3))) + 50.0


class Chaotic(torch.nn.Module):
    """Smooth on radiographs, chaotic off them: float rounding on noise moves it by 1e4 y."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        w = torch.randn(4, 3, 3, 3, generator=g)
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.conv.weight.data = w - w.mean(dim=(2, 3), keepdim=True)  # high-pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(1, 2, 3))  # ~0.15 on radiographs, ~1.9 on noise
        return 50.0 + h + 1e4 * torch.sin(1e6 * torch.relu(h - 0.5) ** 2)


class Wide(torch.nn.Module):
    """56k weights, so the file is mostly weights (for the float16 size)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.c1 = torch.nn.Conv2d(3, 32, 7, stride=4)
        self.c2 = torch.nn.Conv2d(32, 64, 5, stride=4)
        self.fc = torch.nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x)))).mean(dim=(2, 3))
        return self.fc(h) * 10.0 + 50.0


def riken_like_torchscript(path: Path) -> Path:
    """A TorchScript model with the RIKEN SENet154 interface: (N, 3, 320, 320) -> (N, 1)."""
    return _save(RikenLike(), path)


def xrv_age_model(model: torch.jit.ScriptModule, png: Path) -> float:
    """TorchXRayVision's age for an 8-bit PNG, its steps rebuilt in torch.

    ``xrv.utils.load_image`` (``(2 * x / 255 - 1) * 1024``, first channel),
    ``xrv.datasets.XRayCenterCrop``, then ``AgeModel.forward``: repeat to 3 channels,
    ``F.interpolate(size=320, mode='bilinear', antialias=True)``, ``(x + 1024) / 2048``,
    ImageNet normalisation, the TorchScript model.
    """
    from PIL import Image

    img = np.asarray(Image.open(png))
    img = (2 * (img.astype(np.float32) / 255) - 1.0) * 1024
    if img.ndim > 2:
        img = img[:, :, 0]
    rows, cols = img.shape
    crop = min(rows, cols)
    top, left = rows // 2 - crop // 2, cols // 2 - crop // 2
    x = torch.from_numpy(np.ascontiguousarray(img[top : top + crop, left : left + crop]))
    x = x[None, None].repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(320, 320), mode="bilinear", antialias=True)
    x = (x + 1024) / 2048
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return float(model((x - mean) / std).reshape(-1)[0])


def radiographs() -> list[Path]:
    """Three square NIH films and two non-square (cropped) ones, all adult frontal."""
    nih = [r for r in manifest_rows("nih_cxr14") if float(r["age_years"]) >= 18][:3]
    other = [r for r in manifest_rows("covid_idc")
             if "nejmc2001573_f1a" in r["path"] or "auntminnie-c-" in r["path"]]
    return [MANIFEST.parent / r["path"] for r in nih + other]


def _ages(model_dir: Path, paths: list[Path]) -> np.ndarray:
    ests = XRayAge.load(model_dir).predict([str(p) for p in paths])
    assert all(e.xray_age is not None for e in ests), [e.quality.messages for e in ests]
    return np.array([e.xray_age for e in ests])


@pytest.mark.data
def test_riken_preset_matches_torchxrayvision_age_model(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ts = riken_like_torchscript(tmp_path / "riken_like.pt")
    model = torch.jit.load(str(ts))
    paths = radiographs()
    reference = np.array([xrv_age_model(model, p) for p in paths])
    out = tmp_path / "riken"
    assert main(["import-torchscript", str(ts), "--preset", "riken", "--out", str(out)]) == 0
    assert ModelCard.load(out).preprocessing.quantize is False
    new = np.abs(_ages(out, paths) - reference)
    # The preset before the fix rounded the resized image to 8 bits: 0.45 y apart.
    old_spec = dataclasses.replace(PRESETS["riken"]["preprocessing"], quantize=True)
    monkeypatch.setitem(PRESETS["riken"], "preprocessing", old_spec)
    import_torchscript(ts, tmp_path / "old")
    old = np.abs(_ages(tmp_path / "old", paths) - reference)
    print(f"|xrayage - xrv| new preset mean {new.mean():.2e} max {new.max():.2e} y; "
          f"quantized preset mean {old.mean():.3f} max {old.max():.3f} y")
    assert new.max() <= 0.01
    assert old.mean() > 0.1


@pytest.mark.data
def test_reference_is_torchxrayvision_itself(tmp_path: Path) -> None:
    """Where TorchXRayVision is installed, :func:`xrv_age_model` is its AgeModel's result."""
    if importlib.util.find_spec("torchxrayvision") is None:
        pytest.skip("torchxrayvision is not installed")
    import torchvision
    import torchxrayvision as xrv
    from torchxrayvision.baseline_models.riken import AgeModel

    model = torch.jit.load(str(riken_like_torchscript(tmp_path / "m.pt")))
    age_model = AgeModel.__new__(AgeModel)  # __init__ would download the real weights
    torch.nn.Module.__init__(age_model)
    age_model.model = model
    age_model.norm = torchvision.transforms.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))
    for png in radiographs()[2:]:
        img = xrv.datasets.XRayCenterCrop()(xrv.utils.load_image(str(png)))
        with torch.no_grad():
            theirs = float(age_model(torch.from_numpy(img)[None]).reshape(-1)[0])
        assert xrv_age_model(model, png) == pytest.approx(theirs, abs=1e-4)


@pytest.mark.data
def test_import_riken_preset_round_trip(tmp_path: Path) -> None:
    ts = riken_like_torchscript(tmp_path / "riken_like.pt")
    out = tmp_path / "riken"
    assert main(["import-torchscript", str(ts), "--preset", "riken", "--out", str(out)]) == 0
    estimator = XRayAge.load(out)
    card = estimator.card
    assert card.preprocessing.image_size == 320 and card.preprocessing.channels == 3
    assert card.extra["source_sha256"] and card.extra["verification"] == "synthetic radiographs"
    est = estimator.predict(str(NEMA))
    from xrayage.io import read_radiograph
    from xrayage.preprocess import preprocess

    x = preprocess(read_radiograph(NEMA), card.preprocessing)[None]
    reference = torch.jit.load(str(ts))(torch.from_numpy(x)).item()
    assert est.xray_age == pytest.approx(reference, abs=1e-3)
    assert est.age_years == pytest.approx(64.5, abs=0.1)
    assert est.heatmap is None


def test_an_arbitrary_file_claims_no_published_figures(tmp_path: Path) -> None:
    card = import_torchscript(riken_like_torchscript(tmp_path / "mine.pt"), tmp_path / "o")
    assert card.name == "torchscript-mine" and card.metrics == {}
    assert card.extra["source_identity"] == "unknown file"
    assert "3.67" not in card.description and "xrayage evaluate" in card.description
    assert "xrayage calibrate" in card.description and card.training_data == []


def test_the_published_file_name_is_claimed_not_verified(tmp_path: Path) -> None:
    card = import_torchscript(riken_like_torchscript(tmp_path / RIKEN_FILE), tmp_path / "o")
    published = card.metrics["published_figures_of_the_riken_model"]
    assert published["mae_nih_holdout"] == 3.67 and published["mae_jsrt"] == 4.95
    assert published["file_identity"] == "claimed by file name, not verified"
    assert card.name == "riken-senet154"
    assert "claimed by file name, not verified" in card.description
    assert "mae" not in card.metrics  # the report's headline MAE stays unmeasured


def test_published_figures_are_stated_for_the_published_sha256(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xrayage.card import sha256_file

    ts = riken_like_torchscript(tmp_path / "renamed.pt")
    monkeypatch.setitem(PRESETS["riken"], "published_sha256", sha256_file(ts))
    card = import_torchscript(ts, tmp_path / "o")
    assert card.extra["source_identity"] == "verified by sha256"
    assert card.metrics["published_figures_of_the_riken_model"]["mae_nih_holdout"] == 3.67
    assert "Published figures of the RIKEN model" in card.description


def test_without_file_the_torchxrayvision_cache_is_used(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".torchxrayvision" / "models_data"
    assert main(["import-torchscript", "--out", str(tmp_path / "o")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and str(cache / RIKEN_FILE) in err and "never downloads" in err
    cache.mkdir(parents=True)
    riken_like_torchscript(cache / RIKEN_FILE)
    assert main(["import-torchscript", "--out", str(tmp_path / "o")]) == 0
    card = ModelCard.load(tmp_path / "o")
    assert card.extra["source_file"] == RIKEN_FILE
    assert card.extra["source_identity"] == "claimed by file name, not verified"
    assert str(cache / RIKEN_FILE) in capfd.readouterr().err
    assert "it runs code from the file" in caplog.text  # the trust warning stays


@pytest.mark.data
def test_a_chaotic_network_is_checked_on_radiographs_not_noise(tmp_path: Path) -> None:
    path = _save(Chaotic(), tmp_path / "chaotic.pt")
    noise = np.random.default_rng(0).standard_normal((2, 3, 320, 320))
    with pytest.raises(ModelError, match="differ"):  # the old check: noise
        import_torchscript(path, tmp_path / "noise", verify_inputs=noise)
    card = import_torchscript(path, tmp_path / "synthetic")
    assert card.extra["export_max_abs_diff_years"] <= 0.01
    assert main(["import-torchscript", str(path), "--out", str(tmp_path / "real"),
                 "--verify-images", str(NIH_DIR)]) == 0
    card = ModelCard.load(tmp_path / "real")
    assert card.extra["verification"] == "images" and card.extra["verification_inputs"] == 4


@pytest.mark.data
def test_float16_weights_halve_the_file_and_agree(tmp_path: Path) -> None:
    path = _save(Wide(), tmp_path / "wide.pt")
    full = import_torchscript(path, tmp_path / "fp32")
    assert main(["import-torchscript", str(path), "--out", str(tmp_path / "fp16"),
                 "--weights", "float16"]) == 0
    half = ModelCard.load(tmp_path / "fp16")
    ratio = half.extra["onnx_bytes"] / full.extra["onnx_bytes"]
    diff = half.extra["export_max_abs_diff_years"]
    print(f"float16 weights: {full.extra['onnx_bytes']} -> {half.extra['onnx_bytes']} bytes "
          f"({ratio:.2f}), max |ONNX - torch| {diff:.2e} y "
          f"(float32 {half.extra['float32_export_max_abs_diff_years']:.2e} y)")
    assert half.extra["weights"] == "float16" and ratio < 0.6 and 0 < diff <= 0.1
    assert half.extra["onnx_bytes_float32"] == full.extra["onnx_bytes"]
    paths = radiographs()[:2]
    assert np.allclose(_ages(tmp_path / "fp16", paths), _ages(tmp_path / "fp32", paths),
                       atol=0.1)


def test_float16_keeps_what_float16_cannot_hold(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    big = numpy_helper.from_array(np.full((4, 4), 1e6, np.float32), "big")
    small = numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "small")
    graph = helper.make_graph(
        [helper.make_node("Add", ["big", "small"], ["s"]),
         helper.make_node("Add", ["x", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [big, small])
    onnx.save(helper.make_model(graph), str(tmp_path / "a.onnx"))
    assert weights_to_float16(tmp_path / "a.onnx", tmp_path / "b.onnx") == 1
    kinds = {i.name: i.data_type for i in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    assert kinds == {"big": TensorProto.FLOAT, "small__float16": TensorProto.FLOAT16}


@pytest.mark.data
def test_calibrate_an_imported_model(tmp_path: Path) -> None:
    out = tmp_path / "riken"
    import_torchscript(riken_like_torchscript(tmp_path / "m.pt"), out)
    manifest = write_nih_subset(tmp_path, 30)
    preds = tmp_path / "held_out.csv"
    assert main(["predict", str(manifest), "--model", str(out), "-o", str(preds)]) == 0
    with open(preds, newline="") as handle:
        assert sum(bool(r["xray_age"]) for r in csv.DictReader(handle)) >= 20
    calibrated = tmp_path / "calibrated"
    assert main(["calibrate", str(out), str(preds), "--out", str(calibrated)]) == 0
    card = ModelCard.load(calibrated)
    assert card.bias_correction is not None and card.conformal is not None
    assert card.conformal.n >= 20 and ModelCard.load(out).conformal is None
    est = XRayAge.load(calibrated).predict(str(radiographs()[0]), age_years=57.0)
    assert est.age_interval_lower is not None and est.age_interval_upper is not None
    assert est.age_gap_corrected is not None


def test_not_torchscript_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model" * 10)
    assert main(["import-torchscript", str(bad), "--out", str(tmp_path / "o")]) == 2  # bad input


def test_wrong_interface_fails_verification(tmp_path: Path) -> None:
    class Noisy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3)) + torch.rand(x.shape[0])

    path = _save(Noisy(), tmp_path / "noisy.pt")
    with pytest.raises(ModelError, match="differ"):
        import_torchscript(path, tmp_path / "o", verify_inputs=np.zeros((2, 3, 320, 320)))
    with pytest.raises(ModelError, match="differ"):
        import_torchscript(path, tmp_path / "o2")


def test_import_of_a_text_file_is_bad_input_in_one_line(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    assert main(["import-torchscript", str(text), "--preset", "riken",
                 "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "not a TorchScript model" in err
    assert "FutureWarning" not in err and not (tmp_path / "out").exists()
