"""Reading predictions (provenance, in-sample guard), joining clinical tables, shaping columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayage.cohort import CohortDataError, expand_findings, merge_clinical, read_predictions
from xrayage.cohort.table import design, sex_male, to_binary
from xrayage.errors import MissingExtraError, XRayAgeDeprecationWarning
from xrayage.extras import require


def write(tmp_path: Path, **columns: list[object]) -> Path:
    path = tmp_path / "pred.csv"
    base = {"path": ["a/x1.png", "a/x2.png", "a/x3.png"], "xray_age": [50.0, 60.0, 70.0]}
    pd.DataFrame({**base, **columns}).to_csv(path, index=False)
    return path


def test_unmarked_predictions_are_unverified(tmp_path: Path) -> None:
    _, prov = read_predictions(write(tmp_path))
    assert prov.status == "unverified" and not prov.trusted


def test_fold_column_alone_is_not_proof(tmp_path: Path) -> None:
    _, prov = read_predictions(write(tmp_path, fold=[0, 1, 2]))
    assert prov.status == "unverified" and not prov.trusted and "sidecar" in prov.source
    _, prov = read_predictions(write(tmp_path, fold=[0, 1, 2]), held_out=True)
    assert prov.status == "out-of-fold" and prov.trusted


def test_in_sample_bias_correction_detected(tmp_path: Path) -> None:
    path = write(tmp_path, fold=[0, 1, 2])
    Path(str(path) + ".provenance.json").write_text(json.dumps(
        {"out_of_fold": True, "bias_correction": {
            "slope": 0.6, "intercept": 19, "n": 3, "fitted_on": "pooled out-of-fold predictions"}}))
    _, prov = read_predictions(path)
    assert prov.trusted and prov.correction_in_sample


def test_sidecar_marks_out_of_fold(tmp_path: Path) -> None:
    path = write(tmp_path)
    Path(str(path) + ".provenance.json").write_text(json.dumps({"out_of_fold": True, "k": 5}))
    _, prov = read_predictions(path)
    assert prov.status == "out-of-fold" and prov.details["k"] == 5


def test_declared_held_out(tmp_path: Path) -> None:
    _, prov = read_predictions(write(tmp_path), held_out=True)
    assert prov.status == "declared-held-out" and prov.trusted


def test_in_sample_rows_dropped_unless_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, in_sample=[True, False, False], fold=[0, 1, 2])
    Path(str(path) + ".provenance.json").write_text(json.dumps({"out_of_fold": True}))
    df, prov = read_predictions(path)
    assert len(df) == 2 and prov.n_in_sample_dropped == 1 and prov.trusted
    df, prov = read_predictions(path, allow_in_sample=True)
    assert len(df) == 3 and prov.n_in_sample_kept == 1 and not prov.trusted


def test_unreadable_sidecar(tmp_path: Path) -> None:
    path = write(tmp_path)
    Path(str(path) + ".provenance.json").write_text("[1, 2]")
    with pytest.raises(CohortDataError, match="unreadable provenance sidecar"):
        read_predictions(path)


def test_legacy_chronological_age_is_read_as_age_years(tmp_path: Path) -> None:
    path = write(tmp_path, chronological_age=[40.0, None, 60.0])
    with pytest.warns(XRayAgeDeprecationWarning, match="'chronological_age' is read as"):
        df, _ = read_predictions(path)
    assert "chronological_age" not in df.columns
    assert df["age_years"].tolist()[::2] == [40.0, 60.0]
    both = write(tmp_path, chronological_age=[40.0, 50.0, 60.0], age_years=[41.0, None, None])
    with pytest.warns(XRayAgeDeprecationWarning):
        df, _ = read_predictions(both)
    assert df["age_years"].tolist() == [41.0, 50.0, 60.0]


def test_missing_xray_age_column(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    pd.DataFrame({"path": ["x"]}).to_csv(path, index=False)
    with pytest.raises(CohortDataError, match="no 'xray_age' column"):
        read_predictions(path)


@pytest.mark.parametrize("key", ["a/x1.png", "x1.png", "x1"])
def test_merge_on_path_name_or_stem(key: str) -> None:
    pred = pd.DataFrame({"path": ["a/x1.png", "a/x2.png"], "xray_age": [50.0, 60.0]})
    clin = pd.DataFrame({"image": [key], "htn": [1]})
    merged, counts = merge_clinical(pred, clin, "image")
    assert counts["n_matched"] == 1 and merged.loc[0, "htn"] == 1
    assert merged.loc[0, "image"] == key


def test_merge_relative_clinical_paths_onto_absolute_predictions() -> None:
    # an image list written with absolute paths, a clinical table with the dataset's own
    # relative paths; the same file name in two folders must not be confused
    pred = pd.DataFrame({"path": ["/data/nih/images/x1.png", "/data/other/images/x1.png",
                                  "/data/nih/images/x2.png"], "xray_age": [50.0, 60.0, 70.0]})
    clin = pd.DataFrame({"path": ["nih/images/x1.png", "nih/images/x2.png"], "htn": [1, 0]})
    merged, counts = merge_clinical(pred, clin, "path")
    assert counts["n_matched"] == 2
    assert merged.set_index("xray_age")["htn"].to_dict() == {50.0: 1, 70.0: 0}


def test_merge_errors() -> None:
    pred = pd.DataFrame({"path": ["x1.png"], "xray_age": [50.0]})
    with pytest.raises(CohortDataError, match="no column 'id'"):
        merge_clinical(pred, pd.DataFrame({"other": [1]}), "id")
    with pytest.raises(CohortDataError, match="more than once"):
        merge_clinical(pred, pd.DataFrame({"id": ["x1", "x1"]}), "id")
    with pytest.raises(CohortDataError, match="no prediction matched"):
        merge_clinical(pred, pd.DataFrame({"id": ["zz"]}), "id")


def test_expand_findings_nih_style() -> None:
    df = pd.DataFrame({"findings": ["Effusion|Pleural_Thickening", "No Finding", None]})
    out, names = expand_findings(df, "findings")
    assert names == ["effusion", "no_finding", "pleural_thickening"]
    assert out["pleural_thickening"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(out.loc[2, "effusion"])


def test_binary_and_sex_coding() -> None:
    assert to_binary(pd.Series(["yes", "No", None, 1]), "c").tolist()[:2] == [1.0, 0.0]
    assert sex_male(pd.Series(["M", "female", ""])).tolist()[:2] == [1.0, 0.0]
    with pytest.raises(CohortDataError, match="not binary"):
        to_binary(pd.Series([0, 1, 2]), "c")
    with pytest.raises(CohortDataError, match="cannot read sex"):
        sex_male(pd.Series(["X"]))


def test_design_one_hot_keeps_missing() -> None:
    out = design(pd.DataFrame({"view": ["AP", "PA", None], "bmi": [20, 25, 30]}), ["view", "bmi"])
    assert list(out.columns) == ["view_PA", "bmi"] and np.isnan(out.loc[2, "view_PA"])


def test_missing_extra_names_the_feature() -> None:
    with pytest.raises(MissingExtraError, match=r"xrayage\[analysis\]"):
        require("xrayage_no_such_module", "analysis", "xrayage analyze")
