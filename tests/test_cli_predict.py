"""``xrayage predict``: mixed inputs, CSV/JSONL rows, resume, interruption, heat maps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage.cli import predict as predict_cli
from xrayage.cli.main import main
from xrayage.predict import RECORD_FIELDS

from .dicom_factory import make_dataset, to_bytes
from .onnx_factory import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder with PNGs, a suffix-less DICOM, a lateral DICOM, garbage, and a manifest."""
    root = tmp_path / "in"
    (root / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = (rng.random((300, 320)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "nested" / f"img{i}.png")
    (root / "IM0001").write_bytes(to_bytes(make_dataset()))
    (root / "lateral.dcm").write_bytes(to_bytes(make_dataset(ViewPosition="LL")))
    (root / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "notes.txt").write_text("not an image and not listed")
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age_years", "sex", "view"])
        writer.writerow(["in/nested/img0.png", "61.5", "F", "PA"])
        writer.writerow(["in/nested/img1.png", "12", "M", ""])
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_mixed_inputs_to_csv(tiny: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    code = main(["predict", str(inputs), str(tmp_path / "manifest.csv"), "-o", str(out),
                 "--model", str(tiny)])
    assert code == 0
    rows = read_rows(out)
    assert list(rows[0]) == list(RECORD_FIELDS)
    by_name = {Path(r["path"]).name + ("@m" if "manifest" in r["path"] or r["age_years"]
                                         in ("61.5", "12.0") else ""): r for r in rows}
    assert len(rows) == 8  # 6 folder files (txt skipped) + 2 manifest rows
    dicom = by_name["IM0001"]
    assert dicom["qc_status"] == "ok" and float(dicom["xray_age"]) > 0
    assert dicom["age_years"] == "55.0" and dicom["age_gap_corrected"] != ""
    lateral = by_name["lateral.dcm"]
    assert lateral["qc_status"] == "reject" and lateral["qc_reasons"] == "lateral_view"
    assert lateral["xray_age"] == ""
    broken = by_name["broken.png"]
    assert broken["qc_status"] == "error" and "broken.png" in broken["error"]
    manifest_rows = [r for r in rows if r["age_years"] in ("61.5", "12.0")]
    by_age = {r["age_years"]: r for r in manifest_rows}
    assert by_age["61.5"]["qc_status"] == "ok"  # the manifest's view and age fill the gaps
    assert by_age["12.0"]["qc_status"] == "reject"


def test_resume_skips_done_and_repairs_partial_row(tiny: Path, inputs: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(tiny)]) == 0
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10])  # killed while writing row 3
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(tiny)]) == 0
    rows = read_rows(out)
    assert len(rows) == 6 and len({r["path"] for r in rows}) == 6
    assert sorted(out.read_text().splitlines()) == sorted(full.splitlines())


def test_interrupted_run_keeps_written_rows(tiny: Path, inputs: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = predict_cli._emit
    calls = []

    def interrupted(*args):  # Ctrl-C after three rows were written
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        real(*args)

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(predict_cli, "_emit", interrupted)
    code = main(["predict", str(inputs), "-o", str(out), "--model", str(tiny),
                 "--batch-size", "1"])
    assert code == 130
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 3
    monkeypatch.setattr(predict_cli, "_emit", real)
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(tiny)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and len({r["path"] for r in rows}) == 6


def test_heatmaps_written(tiny: Path, inputs: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    maps = tmp_path / "maps"
    assert main(["predict", str(inputs / "IM0001"), str(inputs / "nested"), "--heatmaps",
                 str(maps), "--model", str(tiny)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4
    pngs = sorted(maps.glob("*.png"))
    assert len(pngs) == 4
    with Image.open(pngs[0]) as image:
        assert image.mode == "RGB"


def test_bad_output_suffix(tiny: Path, inputs: Path, tmp_path: Path) -> None:
    assert main(["predict", str(inputs), "-o", str(tmp_path / "x.txt"),
                 "--model", str(tiny)]) == 2
