"""CheXpert (Irvin et al. 2019): ``train.csv``/``valid.csv`` with Path, Sex, Age, views, labels."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .base import Sample, normalise_sex, parse_float, read_csv_rows, require_columns

logger = logging.getLogger(__name__)

LICENCE = "Stanford University CheXpert Dataset Research Use Agreement (non-commercial research)"
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_PATIENT = re.compile(r"patient(\d+)")


def load(root: Path, check: str = "1") -> list[Sample]:
    """Read CheXpert samples.

    Parameters
    ----------
    root : path
        The CSV (``train.csv``, ``valid.csv``, optionally gzipped), or the folder holding
        ``train.csv`` (``CheXpert-v1.0[-small]/``).
    check : {'1', '0'}
        ``'0'`` keeps rows whose image file is missing (to parse a table on its own).

    Returns
    -------
    list of Sample
        Paths in the CSV start with the dataset folder's name, so they are resolved
        against that folder's parent. Findings are the label columns equal to 1.
    """
    table = Path(root)
    if table.is_dir():
        table = table / "train.csv"
    if not table.is_file():
        raise ValueError(f"chexpert: {table} not found")
    samples, missing, no_age = [], 0, 0
    labels: list[str] = []
    for i, row in enumerate(read_csv_rows(table)):
        if i == 0:
            require_columns(row, COLUMNS, table)
            labels = [c for c in row if c not in COLUMNS]
        rel = Path(row["Path"])
        base = table.parent
        path = base.parent / rel if rel.parts and rel.parts[0] == base.name else base / rel
        if check != "0" and not path.is_file():
            missing += 1
            continue
        age = parse_float(row["Age"])
        if age is None or age <= 0:
            no_age += 1
            continue
        frontal = row["Frontal/Lateral"].strip().lower() == "frontal"
        view = (row["AP/PA"].strip().upper() or "") if frontal else "LATERAL"
        view = view if view in ("PA", "AP", "LATERAL") else ""
        match = _PATIENT.search(row["Path"])
        samples.append(Sample(
            path=path, age_years=age, sex=normalise_sex(row["Sex"]), view=view,
            patient_id=f"chexpert:{match.group(1) if match else row['Path']}",
            findings=tuple(c for c in labels if parse_float(row.get(c)) == 1.0),
            source="chexpert",
        ))
    logger.info("chexpert: %d images, %d missing files, %d without age",
                len(samples), missing, no_age)
    return samples
