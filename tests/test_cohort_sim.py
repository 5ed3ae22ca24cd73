"""A small run of ``benchmarks/sim_cohort.py``: the estimators are sane (not their coverage).

The full simulation (hundreds of repetitions, coverage and false-positive rates) is
``python benchmarks/sim_cohort.py --reps 200``; its results are in docs/analysis.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sim_cohort.py"


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_cohort", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim_cohort"] = module
    spec.loader.exec_module(module)
    return module


def test_planted_columns_hold_exactly_m_films(sim: ModuleType) -> None:
    for design, patients in (("patient", 2), ("film", 4)):
        df = sim.gap_cohort(1500, 0, 4, design)
        assert df["planted"].sum() == 4 and df["null"].sum() == 4
        assert df.loc[df.planted == 1, "patient_id"].nunique() == patients
        assert not (df.planted & df.null).any()


def test_gap_rows_are_sane_and_match_the_cli(sim: ModuleType) -> None:
    rows = sim.run_gap(reps=2, n=1500, seed=0, cli_check=1)  # also via analyze_cohort
    assert len(rows) == 12 and all(0 <= r["rate"] <= 1 and r["reps"] == 2 for r in rows)


def test_cox_and_pace_estimators_are_sane(sim: ModuleType) -> None:
    cox = sim.run_cox(reps=2, n=1500, seed=0)
    note = cox[0]["note"]
    hr = float(note.split("geo-mean HR ")[1].split(";")[0])
    assert 0.98 < hr < 1.06 and "events" in note
    pace = sim.run_pace(reps=1, n=900, seed=0)
    est = float(pace[1]["note"].split("mean est ")[1].split(";")[0])
    assert 0.0 < est < 0.6  # planted +0.3 pace with the condition


def test_main_prints_a_table(sim: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    code = sim.main(["--reps", "1", "--scenarios", "cox", "--markdown"])
    out = capsys.readouterr().out
    assert code in (0, 1) and out.startswith("| scenario |") and "HR 1.02" in out
    assert np.isfinite(float(out.splitlines()[2].split("|")[3].strip(" ✗")))
