"""``xrayage analyze`` end to end on a synthetic cohort: files, numbers, warnings, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from xrayage.cli.main import main
from xrayage.cohort import simulate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Predictions and a clinical table keyed by file stem, with NIH-style findings."""
    tmp = tmp_path_factory.mktemp("cohort")
    df = simulate_cohort(400, 5, condition_effect=1.5, hr_per_year=1.04)
    df["findings"] = df.condition.map({1: "Effusion", 0: "No Finding"})
    df.loc[df.null_condition == 1, "findings"] += "|Mass"
    df.loc[0, "qc_status"] = "reject"
    pred = tmp / "pred.csv"
    df[["path", "xray_age", "age_years", "age_gap", "age_gap_corrected",
        "qc_status"]].to_csv(pred, index=False)
    clin = tmp / "clinical.csv"
    df.assign(image=df.path.str.replace(".png", ""))[
        ["image", "sex", "view", "condition", "findings", "time", "event",
         "patient_id"]].to_csv(clin, index=False)
    return pred, clin


def run(pred: Path, clin: Path, out: Path, *extra: str) -> int:
    return main(["analyze", str(pred), "--clinical", str(clin), "--on", "image",
                 "--out", str(out), *extra])


def test_full_analysis(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    pred, clin = cohort
    code = run(pred, clin, tmp_path, "--condition", "condition", "--time", "time", "--event",
               "event", "--covariates", "view", "--cluster", "patient_id", "--bootstrap", "20")
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} == {
        "report.html", "summary.json", "scatter.png", "bland_altman.png", "gap_forest.png",
        "km.png"}
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["counts"]["n_analysed"] == 399 and s["columns"]["gap"] == "age_gap_corrected"
    assert s["accuracy"]["n"] == 399 and "by_group" in s["accuracy"]
    row = s["gap_by_condition"]["conditions"]["condition"]
    assert row["coef_lower"] < 1.5 < row["coef_upper"]
    prog = s["prognosis"]
    assert prog["hazard_ratio_ci"][0] < 1.04 < prog["hazard_ratio_ci"][1]
    assert set(prog["c_index"]) == {"age", "age+gap", "adjusted", "adjusted+gap"}
    assert "gap" in prog["ph_test"] and prog["logrank_p"] is not None
    assert s["provenance"]["status"] == "unverified"
    assert any("IN-SAMPLE RISK" in w for w in s["warnings"])
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html
    assert "Predictions may be in-sample" in html


def test_expand_findings_against_reference(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    pred, clin = cohort
    assert run(pred, clin, tmp_path, "--expand-findings", "findings", "--reference",
               "no_finding", "--correction", "bh", "--predictions-held-out") == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert set(s["gap_by_condition"]["conditions"]) == {"effusion", "mass"}
    assert s["gap_by_condition"]["reference"] == "no_finding"
    assert s["provenance"]["trusted"] and not any("IN-SAMPLE" in w for w in s["warnings"])
    assert "prognosis" not in s


def test_out_of_fold_predictions_trusted(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    pred, clin = cohort
    oof = tmp_path / "oof.csv"
    pd.read_csv(pred).assign(fold=lambda d: d.index % 5).to_csv(oof, index=False)
    assert run(oof, clin, tmp_path / "out", "--condition", "condition") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["provenance"]["status"] == "out-of-fold"


@pytest.mark.parametrize(("args", "message"), [
    (["--condition", "nope"], "no column 'nope'"),
    (["--condition", "view"], "not binary"),
    (["--time", "time"], "both --time and --event"),
    (["--condition", "condition", "--gap", "corrected", "--age", "missing_col"], "missing_col"),
])
def test_bad_input_exits_2(cohort: tuple[Path, Path], tmp_path: Path, args: list[str],
                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    pred, clin = cohort
    assert run(pred, clin, tmp_path, *args) == 2
    assert message in capsys.readouterr().err


def test_registered_in_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--help"]) == 0
    assert "--predictions-held-out" in capsys.readouterr().out
