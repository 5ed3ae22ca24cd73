"""PadChest (Bustos et al. 2020): age from PatientBirth (a year) and StudyDate_DICOM."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from .base import (
    Sample,
    normalise_sex,
    normalise_view,
    parse_float,
    read_csv_rows,
    require_columns,
)

logger = logging.getLogger(__name__)

LICENCE = "PadChest (BIMCV, Universidad de Alicante): CC BY-SA 4.0"
COLUMNS = ("ImageID", "ImageDir", "PatientID", "PatientBirth", "StudyDate_DICOM",
           "PatientSex_DICOM", "Projection", "Labels")
TABLE_GLOB = "PADCHEST_chest_x_ray_images_labels_*.csv*"


def study_age(birth_year: float, study_date: str) -> float | None:
    """Age in years at `study_date` (``YYYYMMDD``) for a birth year, taking mid-year birth.

    PadChest gives only the birth year, so ages carry up to ±0.5 y of rounding.

    Examples
    --------
    >>> round(study_age(1950.0, "20100702"), 2)
    60.0
    """
    try:
        date = dt.datetime.strptime(study_date.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (date - dt.date(int(birth_year), 7, 2)).days / 365.25


def parse_labels(text: str) -> tuple[str, ...]:
    """Parse PadChest's ``['normal', 'pleural effusion']`` into a tuple of labels."""
    parts = (p.strip().strip("'\"").strip() for p in (text or "").strip("[] ").split(","))
    return tuple(p for p in parts if p)


def load(root: Path, csv: str | None = None, check: str = "1") -> list[Sample]:
    """Read PadChest samples: ``root/<ImageDir>/<ImageID>`` (16-bit PNG).

    Parameters
    ----------
    root : path
        Folder holding the numbered image folders (0..54) and the labels CSV.
    csv : str, optional
        The ``PADCHEST_chest_x_ray_images_labels_160K*.csv[.gz]`` table; found in `root`
        by default.
    check : {'1', '0'}
        ``'0'`` keeps rows whose image file is missing.

    Returns
    -------
    list of Sample
        Projections PA/AP (including ``AP_horizontal``) are frontal and ``L`` is lateral;
        others (``COSTAL``, ``EXCLUDE``) are marked ``OTHER`` so the frontal filter drops them.
    """
    root = Path(root)
    table = Path(csv) if csv else next(iter(sorted(root.glob(TABLE_GLOB))), None)
    if table is None or not table.is_file():
        raise ValueError(f"padchest: no {TABLE_GLOB} in {root}: pass padchest:{root}?csv=FILE")
    samples, skipped = [], 0
    for i, row in enumerate(read_csv_rows(table)):
        if i == 0:
            require_columns(row, COLUMNS, table)
        birth = parse_float(row["PatientBirth"])
        age = study_age(birth, row["StudyDate_DICOM"]) if birth else None
        path = root / str(int(float(row["ImageDir"] or 0))) / row["ImageID"]
        if age is None or not 0 <= age <= 120 or (check != "0" and not path.is_file()):
            skipped += 1
            continue
        projection = row["Projection"].strip().upper()
        view = "LATERAL" if projection in ("L", "LL", "RL") else normalise_view(projection)
        view = view or "OTHER"
        samples.append(Sample(
            path=path, age_years=age, sex=normalise_sex(row["PatientSex_DICOM"]), view=view,
            patient_id=f"padchest:{row['PatientID']}", findings=parse_labels(row["Labels"]),
            source="padchest",
        ))
    logger.info("padchest: %d images, %d skipped (no age or file)", len(samples), skipped)
    return samples
