"""``xrayage analyze`` end to end on a synthetic cohort: files, numbers, warnings, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from xrayage.cli.main import main
from xrayage.cohort import simulate_cohort
from xrayage.cohort.simulate import simulate_serial_films
from xrayage.provenance import write_provenance


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
    assert run(oof, clin, tmp_path / "bare", "--condition", "condition") == 0
    s = json.loads((tmp_path / "bare" / "summary.json").read_text())
    assert s["provenance"]["status"] == "unverified"  # a 'fold' column alone proves nothing
    assert any("no provenance sidecar" in w for w in s["warnings"])
    write_provenance(oof, out_of_fold=True, k=5, bias_correction={
        "slope": 0.8, "intercept": 11, "n": 399, "fitted_on": "pooled out-of-fold predictions"})
    assert run(oof, clin, tmp_path / "out", "--condition", "condition") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["provenance"]["status"] == "out-of-fold"
    assert any("fitted on these same images" in w for w in s["warnings"])


def test_new_models_through_the_cli(tmp_path: Path) -> None:
    """Two films per patient, joint model, subgroups, strata, patient-level survival, pace."""
    df = simulate_cohort(800, 3, condition_effect=1.5, hr_per_year=1.04, films_per_patient=2)
    serial = simulate_serial_films(400, 3, pace_effect=0.3).iloc[:800]
    df["study_date"] = serial["study_date"].to_numpy()
    pred = tmp_path / "pred.csv"
    df.to_csv(pred, index=False)
    out = tmp_path / "out"
    assert main(["analyze", str(pred), "--condition", "condition", "--condition",
                 "null_condition", "--joint", "--cluster", "patient_id", "--time", "time",
                 "--event", "event", "--strata", "view", "--by", "sex", "--bootstrap", "20",
                 "--pace-time", "study_date", "--predictions-held-out",
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    g = s["gap_by_condition"]
    assert g["joint"] and "CR2" in g["inference"] and "condition" in g["logistic"]["conditions"]
    prog = s["prognosis"]
    assert prog["n"] == 400 and prog["n_rows"] == 400 and prog["n_events"] == int(
        df.groupby("patient_id").event.first().sum())
    assert prog["strata"] == ["view"] and prog["interaction"]["by"] == "sex"
    assert set(prog["c_index_cv"]) >= {"age", "age+gap", "gain", "gain_ci"}
    assert s["pace"]["n_serial"] == 400
    assert {"pace.png", "pace_spaghetti.png"} <= {p.name for p in out.iterdir()}


def test_condition_also_covariate_exits_2(cohort: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    pred, clin = cohort
    assert run(pred, clin, tmp_path, "--condition", "condition", "--covariates",
               "condition") == 2
    assert "both a condition and a covariate" in capsys.readouterr().err


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
