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
