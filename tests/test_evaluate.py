"""ONNX evaluation over a dataset with the torch-free tiny model: metrics, problems, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage.cli.main import main
from xrayage.evaluate import JSON_KEYS, evaluate, plot

from .conftest import write_nih_subset
from .onnx_factory import build_tiny_model


@pytest.fixture
def setup(tmp_path: Path, shared_data: Path) -> tuple[Path, Path]:
    manifest = write_nih_subset(tmp_path, 12)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(blank)
    for path, pid in ((bad, "x:1"), (blank, "x:2")):
        rows.append({**rows[0], "path": str(path), "patient_id": pid})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, build_tiny_model(tmp_path / "model")


@pytest.mark.data
def test_evaluate_counts_problems(setup: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, model = setup
    result = evaluate(f"manifest:{manifest}", model)
    assert result.metrics["n"] == 12
    assert sorted(p["status"] for p in result.problems) == ["failed", "rejected"]
    assert set(result.groups) == {"sex", "view", "age_band"}
    assert sum(g["n"] for g in result.groups["sex"].values()) == 12
    ages = np.array([p["age_years"] for p in result.predictions])
    assert result.metrics["age_mean"] == pytest.approx(ages.mean())
    paths = plot(result, tmp_path / "plots")
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.data
def test_no_skill_median_source(setup: tuple[Path, Path]) -> None:
    manifest, model = setup
    result = evaluate(f"manifest:{manifest}", model)
    ages = [p["age_years"] for p in result.predictions]
    assert result.metrics["no_skill_median"] == np.median(ages)
    assert any("median" in n for n in result.notes)


@pytest.mark.data
def test_cli_json(setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                  tmp_path: Path) -> None:
    manifest, model = setup
    preds = tmp_path / "preds.csv"
    assert main(["evaluate", f"manifest:{manifest}", "--model", str(model), "--json",
                 "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert tuple(out)[: len(JSON_KEYS)] == JSON_KEYS
    assert out["n"] == 12 and out["failed"] == 1 and out["rejected"] == 1
    assert len(preds.read_text().splitlines()) == 13
    assert main(["evaluate", f"manifest:{manifest}", "--model", str(model)]) == 0
    assert "mae" in capsys.readouterr().out


def test_cli_bad_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "nope:/x"]) == 2
    assert "ADAPTER:PATH" in capsys.readouterr().err


@pytest.mark.data
def test_split_needs_run_dir(setup: tuple[Path, Path]) -> None:
    manifest, model = setup
    with pytest.raises(ValueError, match="run-dir"):
        evaluate(f"manifest:{manifest}", model, split="val")


def _set_training_data(model: Path, training_data: list[dict]) -> None:
    card_path = model / "model_card.json"
    card = json.loads(card_path.read_text())
    card["training_data"] = training_data
    card_path.write_text(json.dumps(card))


@pytest.mark.data
def test_warns_when_evaluated_patients_were_trained_on(
        setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from xrayage.insample import new_salt, patient_record

    manifest, model = setup
    with open(manifest, newline="") as handle:
        patients = [r["patient_id"] for r in csv.DictReader(handle)]
    trained = set(patients[:5])
    record = patient_record(sorted(trained), new_salt())
    assert not set(record["sha256"]) & trained and len(record["sha256"]) == len(trained)
    _set_training_data(model, [{"name": "nih_cxr14", "sources": ["nih_cxr14"],
                                "training_patients": record}])
    assert main(["evaluate", f"manifest:{manifest}", "--model", str(model), "--json"]) == 0
    captured = capsys.readouterr()
    notes = json.loads(captured.out)["notes"]
    hits = sum(p in trained for p in patients)
    assert any(n.startswith(f"IN-SAMPLE: {hits} of 14 evaluated images") for n in notes)
    assert any(r.levelname == "WARNING" and "IN-SAMPLE" in r.getMessage()
               for r in caplog.records)  # on stderr, through the command line's log
    # patients it never saw: no warning
    _set_training_data(model, [{"name": "nih_cxr14", "sources": ["nih_cxr14"],
                                "training_patients": patient_record(["nih:0"], new_salt())}])
    assert not any("IN-SAMPLE" in n for n in evaluate(str(manifest), model).notes)


@pytest.mark.data
def test_a_card_without_patients_warns_by_source(setup: tuple[Path, Path]) -> None:
    manifest, model = setup
    _set_training_data(model, [{"name": "nih_cxr14", "sources": ["nih_cxr14"]}])
    notes = evaluate(f"manifest:{manifest}", model).notes
    assert any(n.startswith("POSSIBLY IN-SAMPLE: 14 of 14") and "nih_cxr14" in n
               for n in notes)


def test_the_bundled_card_records_its_training_patients() -> None:
    from xrayage.card import ModelCard
    from xrayage.insample import patient_digest
    from xrayage.model import resolve_model_dir

    entry = ModelCard.load(resolve_model_dir()).training_data[0]
    record = entry["training_patients"]
    assert len(record["sha256"]) == entry["patients"] > 500 and len(record["salt"]) == 32
    assert patient_digest(record["salt"], "nih:1") in record["sha256"]  # an NIH patient it saw


@pytest.mark.data
def test_progress_bar_stays_off_when_stderr_is_not_a_terminal(
        setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    manifest, model = setup
    result = evaluate(str(manifest), model, progress=True)
    assert result.metrics["n"] == 12
    err = capsys.readouterr().err
    assert "evaluate" not in err and "━" not in err
