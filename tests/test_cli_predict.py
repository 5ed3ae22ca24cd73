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


def test_unknown_model_is_bad_usage(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(inputs), "--model", "nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model 'nosuchmodel'" in err


def test_manifest_repeats_each_give_a_row_and_resume(tiny: Path, inputs: Path,
                                                     tmp_path: Path) -> None:
    """42 rows over 40 paths give 42 rows, with -o too; a resumed run adds only the rest."""
    rng = np.random.default_rng(1)
    for i in range(37):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(
            inputs / f"r{i}.png")
    paths = [f"in/r{i}.png" for i in range(37)] + ["in/nested/img0.png",
                                                  "in/nested/img1.png", "in/IM0001"]
    order = [*paths[:5], paths[0], *paths[5:30], paths[3], *paths[30:]]  # 42 rows
    ages = {i: f"{30 + i}" for i in range(len(order))}
    manifest = tmp_path / "repeats.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age_years"])
        for i, rel in enumerate(order):
            writer.writerow([rel, ages[i]])
    assert len(order) == 42 and len(set(order)) == 40
    full = tmp_path / "full.csv"
    assert main(["predict", str(manifest), "-o", str(full), "--model", str(tiny)]) == 0
    rows = read_rows(full)
    assert len(rows) == 42
    assert [float(r["age_years"]) for r in rows] == [float(a) for a in ages.values()]
    jsonl = tmp_path / "part.jsonl"
    lines_full = [json.dumps(r) for r in rows]
    assert main(["predict", str(manifest), "-o", str(jsonl), "--model", str(tiny)]) == 0
    lines = jsonl.read_text().splitlines(keepends=True)
    assert len(lines) == 42 and len(lines_full) == 42
    jsonl.write_text("".join(lines[:7]))  # killed after 7 rows: the repeat of row 0 is in
    assert main(["predict", str(manifest), "-o", str(jsonl), "--model", str(tiny)]) == 0
    resumed = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(resumed) == 42
    assert [r["age_years"] for r in resumed] == [float(a) for a in ages.values()]
    assert main(["predict", str(manifest), "-o", str(jsonl), "--model", str(tiny)]) == 0
    assert len(jsonl.read_text().splitlines()) == 42  # nothing new


def test_fhir_ids_for_png_inputs(tiny: Path, inputs: Path, tmp_path: Path) -> None:
    pytest.importorskip("fhir.resources", reason="needs the 'clinical' extra")
    manifest = tmp_path / "ids.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age_years", "view", "patient_id", "study_uid"])
        writer.writerow(["in/nested/img0.png", "50", "PA", "MRN-1", "1.2.3.4.5"])
        writer.writerow(["in/nested/img1.png", "50", "PA", "", ""])
    out = tmp_path / "fhir"
    assert main(["predict", str(manifest), "--model", str(tiny), "--fhir", str(out),
                 "--patient-id", "MRN-DEFAULT", "--study-uid", "1.2.3.9",
                 "--fhir-patient-system", "https://hospital.example/mrn"]) == 0
    docs = {}
    for path in out.glob("*.fhir.json"):
        obs = json.loads(path.read_text())
        docs[obs["subject"]["identifier"]["value"]] = obs
    assert set(docs) == {"MRN-1", "MRN-DEFAULT"}
    for value, study in (("MRN-1", "1.2.3.4.5"), ("MRN-DEFAULT", "1.2.3.9")):
        obs = docs[value]
        assert obs["subject"]["identifier"]["system"] == "https://hospital.example/mrn"
        assert obs["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{study}"
