"""TorchScript import: a small model with the RIKEN interface, round-tripped through ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xrayage import XRayAge
from xrayage.cli.main import main
from xrayage.io import read_radiograph
from xrayage.preprocess import preprocess

from .shared import NEMA

torch = pytest.importorskip("torch")


def riken_like_torchscript(path: Path) -> Path:
    """A TorchScript model with the RIKEN SENet154 interface: (N, 3, 320, 320) -> (N, 1)."""
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=8)
            self.fc = torch.nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))) * 10.0 + 50.0

    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    return path


@pytest.mark.data
def test_import_riken_preset_round_trip(tmp_path: Path) -> None:
    ts = riken_like_torchscript(tmp_path / "riken_like.pt")
    out = tmp_path / "riken"
    assert main(["import-torchscript", str(ts), "--preset", "riken", "--out", str(out)]) == 0
    estimator = XRayAge.load(out)
    card = estimator.card
    assert card.preprocessing.image_size == 320 and card.preprocessing.channels == 3
    assert card.licence == "Apache-2.0" and card.extra["source_sha256"]
    est = estimator.predict(str(NEMA))
    x = preprocess(read_radiograph(NEMA), card.preprocessing)[None]
    reference = torch.jit.load(str(ts))(torch.from_numpy(x)).item()
    assert est.xray_age == pytest.approx(reference, abs=1e-4)
    assert est.age_years == pytest.approx(64.5, abs=0.1)
    assert est.heatmap is None


def test_not_torchscript_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model" * 10)
    assert main(["import-torchscript", str(bad), "--out", str(tmp_path / "o")]) == 2  # bad input


def test_wrong_interface_fails_verification(tmp_path: Path) -> None:
    from xrayage.importer import import_torchscript

    class Noisy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3)) + torch.rand(x.shape[0])

    path = tmp_path / "noisy.pt"
    torch.jit.save(torch.jit.script(Noisy()), str(path))
    with pytest.raises(Exception, match="differ"):
        import_torchscript(path, tmp_path / "o", verify_inputs=np.zeros((2, 3, 320, 320)))


def test_import_of_a_text_file_is_bad_input_in_one_line(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    assert main(["import-torchscript", str(text), "--preset", "riken",
                 "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "not a TorchScript model" in err
    assert "FutureWarning" not in err and not (tmp_path / "out").exists()
