"""Dataset adapters against the real NIH and CheXpert tables and synthetic PadChest/MIMIC."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage.datasets import Sample, filter_samples, load_dataset, parse_spec
from xrayage.datasets.nih import parse_age
from xrayage.datasets.padchest import parse_labels, study_age

from .conftest import MANIFEST, NIH_IMAGES, NIH_TABLE, manifest_rows


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(path)
    return path


def _csv(path: Path, rows: list[dict[str, object]], gz: bool = False) -> Path:
    text = [",".join(rows[0])] + [",".join(f'"{v}"' for v in r.values()) for r in rows]
    data = ("\n".join(text) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.data
def test_nih_joins_all_shared_images() -> None:
    ds = load_dataset(f"nih:{NIH_IMAGES}?csv={NIH_TABLE}")
    rows = manifest_rows("nih_cxr14")  # counts from the data: it keeps growing
    assert len(ds.samples) == len(rows) == len(list(NIH_IMAGES.glob("*.png")))
    first = next(s for s in ds.samples if s.path.name == "00000001_000.png")
    assert (first.age_years, first.sex, first.view, first.patient_id) == (57.0, "M", "PA", "nih:1")
    assert first.findings == ("Cardiomegaly",)
    assert len({s.patient_id for s in ds.samples}) == len({r["patient_id"] for r in rows})
    by_name = {Path(r["path"]).name: r for r in rows}
    assert all(float(by_name[s.path.name]["age_years"]) == s.age_years for s in ds.samples)
    assert "Wang" in ds.licence


@pytest.mark.data
def test_nih_official_lists(tmp_path: Path) -> None:
    # Official layout: images_001/images/*.png beside the table and the two lists.
    names = sorted(p.name for p in NIH_IMAGES.glob("*.png"))[:6]
    for name in names:
        (tmp_path / "images_001" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images_001" / "images" / name).symlink_to(NIH_IMAGES / name)
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").symlink_to(NIH_TABLE)
    (tmp_path / "train_val_list.txt").write_text("\n".join(names[:4]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(names[4:]) + "\n")
    train = load_dataset(f"nih:{tmp_path}", role="train").samples
    test = load_dataset(f"nih:{tmp_path}", role="eval").samples
    assert sorted(s.path.name for s in train) == names[:4]
    assert sorted(s.path.name for s in test) == names[4:]
    assert len(load_dataset(f"nih:{tmp_path}?subset=all").samples) == 6


def test_nih_age_formats() -> None:
    assert parse_age("57") == 57 and parse_age("057Y") == 57
    assert parse_age("006M") == pytest.approx(0.5) and parse_age("") is None


@pytest.mark.slow
@pytest.mark.data
def test_chexpert_parses_real_table() -> None:
    table = MANIFEST.parent / "metadata" / "chexpert_train.csv.gz"
    ds = load_dataset(f"chexpert:{table}?check=0")
    assert len(ds.samples) > 200_000
    s = ds.samples[0]
    assert (s.age_years, s.sex, s.view, s.patient_id) == (68.0, "F", "AP", "chexpert:00001")
    assert "No Finding" in s.findings and s.path.parts[-4:-2] == ("train", "patient00001")
    views = {x.view for x in ds.samples}
    assert {"PA", "AP", "LATERAL"} <= views
    frontal = filter_samples(ds.samples)
    assert 0 < len(frontal) < len(ds.samples)
    assert "CheXpert" in ds.licence


def test_padchest_synthetic(tmp_path: Path) -> None:
    _png(tmp_path / "0" / "a.png")
    _png(tmp_path / "3" / "b.png")
    _png(tmp_path / "3" / "c.png")
    row = {"ImageID": "a.png", "ImageDir": "0", "PatientID": "p1", "PatientBirth": "1950.0",
           "StudyDate_DICOM": "20100702", "PatientSex_DICOM": "F", "Projection": "PA",
           "Labels": "['normal']"}
    rows = [row, {**row, "ImageID": "b.png", "ImageDir": "3", "PatientID": "p2",
                  "Projection": "L", "Labels": "['cardiomegaly', 'pleural effusion']"},
            {**row, "ImageID": "c.png", "ImageDir": "3", "PatientBirth": ""},
            {**row, "ImageID": "missing.png"}]
    _csv(tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", rows, gz=True)
    samples = load_dataset(f"padchest:{tmp_path}").samples
    assert [s.path.name for s in samples] == ["a.png", "b.png"]
    assert samples[0].age_years == pytest.approx(60.0, abs=0.01)
    assert samples[0].patient_id == "padchest:p1" and samples[0].sex == "F"
    assert samples[1].view == "LATERAL"
    assert samples[1].findings == ("cardiomegaly", "pleural effusion")
    assert [s.path.name for s in filter_samples(samples)] == ["a.png"]
    assert parse_labels("[]") == () and study_age(1950, "bad") is None


def test_mimic_synthetic(tmp_path: Path) -> None:
    root = tmp_path / "mimic-cxr-jpg"
    _png(root / "files" / "p10" / "p10000032" / "s50414267" / "d1.jpg")
    _png(root / "files" / "p10" / "p10000032" / "s50414267" / "d2.jpg")
    _png(root / "files" / "p11" / "p11000011" / "s51000000" / "d3.jpg")
    _csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", [
        {"dicom_id": "d1", "subject_id": "10000032", "study_id": "50414267",
         "ViewPosition": "PA", "StudyDate": "21800506"},
        {"dicom_id": "d2", "subject_id": "10000032", "study_id": "50414267",
         "ViewPosition": "LATERAL", "StudyDate": "21800506"},
        {"dicom_id": "d3", "subject_id": "11000011", "study_id": "51000000",
         "ViewPosition": "AP", "StudyDate": "21900101"},
    ], gz=True)
    _csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", [
        {"subject_id": "10000032", "study_id": "50414267", "Atelectasis": "", "No Finding": "1.0"},
    ], gz=True)
    patients = _csv(tmp_path / "patients.csv", [
        {"subject_id": "10000032", "gender": "F", "anchor_age": "52", "anchor_year": "2180",
         "anchor_year_group": "2014 - 2016", "dod": ""},
    ])
    samples = load_dataset(f"mimic:{root}?patients={patients}").samples
    assert [s.path.name for s in samples] == ["d1.jpg", "d2.jpg"]  # d3: no patient row
    assert samples[0].age_years == 52 and samples[0].sex == "F"
    assert samples[0].findings == ("No Finding",) and samples[1].view == "LATERAL"
    assert samples[0].patient_id == "mimic:10000032"


@pytest.mark.data
def test_manifest_source_filter() -> None:
    nih = load_dataset(f"manifest:{MANIFEST}?source=nih_cxr14")
    n_nih, n_figure1 = len(manifest_rows("nih_cxr14")), len(manifest_rows("covid_figure1"))
    assert len(nih.samples) == n_nih and {s.source for s in nih.samples} == {"nih_cxr14"}
    assert all(s.path.is_file() for s in nih.samples[:20])
    assert nih.licence.count("NIH Clinical Center ChestX-ray14") == 1  # a licence once
    both = load_dataset(f"manifest:{MANIFEST}?source=nih_cxr14,covid_figure1").samples
    assert len(both) == n_nih + n_figure1 > n_nih
    with pytest.raises(ValueError, match="no rows"):
        load_dataset(f"manifest:{MANIFEST}?source=nope")


def test_card_summary_names_the_data_without_local_paths(tmp_path: Path) -> None:
    rows = [{"path": f"{name}.png", "age_years": age, "source": "nih_cxr14",
             "patient_id": f"nih:{name}", "licence": f"NIH, public; repo {repo}"}
            for name, age, repo in [("a", 40, "MIT"), ("b", 50, "MIT"), ("c", 60, "none")]]
    for r in rows:
        _png(tmp_path / "data" / str(r["path"]))
    table = _csv(tmp_path / "data" / "manifest.csv", rows)
    summary = load_dataset(f"manifest:{table}?source=nih_cxr14").describe()
    assert summary["name"] == "nih_cxr14"
    assert summary["spec"] == "manifest:manifest.csv?source=nih_cxr14"
    assert str(tmp_path) not in json.dumps(summary)
    assert summary["licence"] == "NIH, public; repo MIT; repo none"
    assert (summary["images"], summary["patients"], summary["age_max"]) == (3, 3, 60)


def test_unknown_sex_is_none(tmp_path: Path) -> None:
    rows = [{"path": f"{name}.png", "age_years": 40, "sex": sex, "patient_id": f"p:{name}"}
            for name, sex in [("a", "female"), ("b", ""), ("c", "X")]]
    for r in rows:
        _png(tmp_path / str(r["path"]))
    samples = load_dataset(f"manifest:{_csv(tmp_path / 'm.csv', rows)}").samples
    assert [s.sex for s in samples] == ["F", None, None]
    assert Sample(Path("x.png"), 40.0).sex is None


def test_spec_errors(tmp_path: Path) -> None:
    assert parse_spec("nih:/a/b?subset=test") == ("nih", "/a/b", {"subset": "test"})
    for bad in ("nope:/x", "/just/a/path", "nih:"):
        with pytest.raises(ValueError, match="ADAPTER:PATH"):
            parse_spec(bad)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset(f"manifest:{tmp_path}?colour=red")
    with pytest.raises(ValueError, match="not found"):
        load_dataset(f"manifest:{tmp_path}/missing.csv")
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as handle:
        csv.writer(handle).writerows([["file", "age"], ["a.png", "3"]])
    with pytest.raises(ValueError, match="missing column"):
        load_dataset(f"manifest:{bad}")


def test_filters() -> None:
    s = [Sample(Path(f"{i}.png"), age, view=v)
         for i, (age, v) in enumerate([(10, "PA"), (30, "AP"), (50, ""), (70, "LATERAL")])]
    assert len(filter_samples(s)) == 3
    assert len(filter_samples(s, keep_unknown_view=False)) == 2
    assert len(filter_samples(s, frontal_only=False)) == 4
    assert [x.age_years for x in filter_samples(s, adults_only=True)] == [30, 50]
    assert [x.age_years for x in filter_samples(s, age_range=(20, 40))] == [30]
    with pytest.raises(ValueError, match="finite"):
        Sample(Path("x.png"), float("nan"))
