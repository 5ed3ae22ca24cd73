"""MIMIC-CXR-JPG (Johnson et al. 2019) joined to MIMIC-IV ``patients`` for age and sex.

Age at a study is ``anchor_age + (study year - anchor_year)``: MIMIC shifts every date of a
patient by one offset, and ``anchor_age`` is the age in the shifted ``anchor_year``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Sample, normalise_sex, normalise_view, parse_float, read_csv_rows, require_columns

logger = logging.getLogger(__name__)

LICENCE = "PhysioNet Credentialed Health Data License 1.5.0 (MIMIC-CXR-JPG, MIMIC-IV)"
META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate")
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year")


def _find(root: Path, pattern: str, given: str | None) -> Path | None:
    if given:
        return Path(given)
    found = sorted(root.glob(pattern)) + sorted(root.glob(f"*/{pattern}"))
    return found[0] if found else None


def load(
    root: Path,
    patients: str | None = None,
    metadata: str | None = None,
    labels: str | None = None,
    check: str = "1",
) -> list[Sample]:
    """Read MIMIC-CXR-JPG samples with ages from MIMIC-IV.

    Parameters
    ----------
    root : path
        MIMIC-CXR-JPG folder: ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` and
        ``mimic-cxr-2.0.0-metadata.csv[.gz]``.
    patients : str, optional
        MIMIC-IV ``patients.csv[.gz]``; found in `root` (any depth 1) by default.
    metadata, labels : str, optional
        Override the metadata table and the findings table (by default
        ``mimic-cxr-2.0.0-chexpert.csv[.gz]``, else ``-negbio``; findings are optional).
    check : {'1', '0'}
        ``'0'`` keeps rows whose image file is missing.

    Returns
    -------
    list of Sample
    """
    root = Path(root)
    meta = _find(root, "mimic-cxr-2.0.0-metadata.csv*", metadata)
    pats = _find(root, "patients.csv*", patients)
    if meta is None or pats is None:
        raise ValueError(f"mimic: need mimic-cxr-2.0.0-metadata.csv and MIMIC-IV patients.csv "
                         f"in {root} (or ?metadata=FILE&patients=FILE)")
    people: dict[str, tuple[str | None, float, int]] = {}
    for i, row in enumerate(read_csv_rows(pats)):
        if i == 0:
            require_columns(row, PATIENT_COLUMNS, pats)
        age, year = parse_float(row["anchor_age"]), parse_float(row["anchor_year"])
        if age is not None and year is not None:
            people[row["subject_id"]] = (normalise_sex(row["gender"]), age, int(year))
    findings = _read_findings(_find(root, "mimic-cxr-2.0.0-chexpert.csv*", labels)
                              or _find(root, "mimic-cxr-2.0.0-negbio.csv*", None))
    samples, skipped = [], 0
    for i, row in enumerate(read_csv_rows(meta)):
        if i == 0:
            require_columns(row, META_COLUMNS, meta)
        subject, study = row["subject_id"], row["study_id"]
        person = people.get(subject)
        date = row["StudyDate"].strip()
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / (
            row["dicom_id"] + ".jpg")
        if person is None or len(date) < 4 or (check != "0" and not path.is_file()):
            skipped += 1
            continue
        sex, anchor_age, anchor_year = person
        view = normalise_view(row["ViewPosition"]) or (
            "OTHER" if row["ViewPosition"].strip() else "")
        samples.append(Sample(
            path=path, age_years=anchor_age + int(date[:4]) - anchor_year, sex=sex, view=view,
            patient_id=f"mimic:{subject}", findings=findings.get(study, ()), source="mimic_cxr",
        ))
    logger.info("mimic: %d images, %d skipped (no patient, date or file)", len(samples), skipped)
    return samples


def _read_findings(path: Path | None) -> dict[str, tuple[str, ...]]:
    if path is None:
        return {}
    out = {}
    for row in read_csv_rows(path):
        names = [c for c in row if c not in ("subject_id", "study_id")]
        out[row["study_id"]] = tuple(c for c in names if parse_float(row[c]) == 1.0)
    return out
