"""``xrayage inspect``: JSON fields, PNG output, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from xrayage.cli.main import main

from .shared import NEMA


@pytest.mark.data
def test_inspect_nema_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_png = tmp_path / "nema.png"
    assert main(["inspect", "--json", "--png", str(out_png), str(NEMA)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["age_years"] == pytest.approx(64.5, abs=0.1)
    assert (record["sex"], record["view"], record["photometric"]) == ("F", "PA", "MONOCHROME1")
    assert (record["rows"], record["columns"]) == (1955, 1841)
    assert record["qc_status"] != "reject" and isinstance(record["qc_reasons"], list)
    with Image.open(out_png) as image:
        assert image.mode == "L" and image.size == (1841, 1955)


@pytest.mark.data
def test_inspect_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(NEMA)]) == 0
    assert "qc_status" in capsys.readouterr().out


def test_garbage_exit_code_2_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(b"<html>not an image</html>" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "xrayage.cli.main", "inspect", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "garbage.dcm" in lines[0] and "Traceback" not in proc.stderr


def test_missing_file_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", str(tmp_path / "none.png")]) == 2
    assert "none.png: no such file" in capsys.readouterr().err


def test_usage_error_exit_2() -> None:
    assert main(["inspect"]) == 2
    assert main(["no-such-command"]) == 2


def _awkward_dicoms(directory: Path) -> list[Path]:
    """DICOMs pydicom warns or logs tracebacks about: an RLE stream with garbage, a VOI
    LUT without data, a truncated file."""
    import numpy as np
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import RLELossless

    from .dicom_factory import make_dataset, to_bytes

    rle = bytearray(to_bytes(make_dataset(np.full((300, 300), 100, np.uint8)), RLELossless))
    rle[-200:-100] = b"\x07" * 100
    lut = make_dataset()
    item = Dataset()
    item.LUTDescriptor = [0, 0, 0]
    lut.VOILUTSequence = Sequence([item])
    whole = to_bytes(make_dataset())
    files = {"rle_garbage.dcm": bytes(rle), "voi_lut_empty.dcm": to_bytes(lut),
             "truncated.dcm": whole[: len(whole) // 2]}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return [directory / name for name in files]


def test_a_refused_file_gets_one_line_unless_verbose(tmp_path: Path) -> None:
    for path in _awkward_dicoms(tmp_path):
        quiet = subprocess.run([sys.executable, "-m", "xrayage.cli.main", "inspect", str(path)],
                               capture_output=True, text=True, timeout=120)
        lines = quiet.stderr.strip().splitlines()
        assert quiet.returncode == 2 and len(lines) == 1 and path.name in lines[0], quiet.stderr
    verbose = subprocess.run([sys.executable, "-m", "xrayage.cli.main", "-v", "inspect",
                              str(tmp_path / "rle_garbage.dcm")],
                             capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 2 and "pydicom" in verbose.stderr  # its log, on request
