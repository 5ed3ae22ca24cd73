"""The xrayage manifest CSV (the format of ``../shared/data/manifest.csv``).

Columns: ``path`` (relative to the CSV's folder, or absolute), ``source``, ``patient_id``,
``age_years``, ``sex``, ``view``, ``findings`` (``|``-separated); optional ``licence``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Sample, normalise_sex, normalise_view, parse_float, read_csv_rows, require_columns

logger = logging.getLogger(__name__)

COLUMNS = ("path", "age_years")


def load(root: Path, source: str | None = None, check: str = "1") -> tuple[list[Sample], str]:
    """Read a manifest.

    Parameters
    ----------
    root : path
        The manifest CSV, or a folder holding ``manifest.csv``.
    source : str, optional
        Comma-separated values of the ``source`` column to keep (``nih_cxr14,covid_idc``).
    check : {'1', '0'}
        ``'0'`` keeps rows whose image file is missing.

    Returns
    -------
    samples : list of Sample
    licence : str
        The kept rows' ``licence`` values, ``"; "``-joined: per source, each distinct
        ``"; "``-separated part once, in order of appearance (a licence shared by rows that
        differ only in a note is written once).
    """
    table = Path(root)
    if table.is_dir():
        table = table / "manifest.csv"
    if not table.is_file():
        raise ValueError(f"manifest: {table} not found")
    wanted = {s.strip() for s in source.split(",") if s.strip()} if source else None
    samples, skipped = [], 0
    licences: dict[str, dict[str, None]] = {}
    for i, row in enumerate(read_csv_rows(table)):
        if i == 0:
            require_columns(row, COLUMNS, table)
        src = row.get("source", "") or ""
        if wanted is not None and src not in wanted:
            continue
        age = parse_float(row["age_years"])
        path = table.parent / row["path"]
        if age is None or (check != "0" and not path.is_file()):
            skipped += 1
            continue
        parts = licences.setdefault(src, {})
        for part in (row.get("licence") or "unknown").split("; "):
            parts.setdefault(part.strip(), None)
        samples.append(Sample(
            path=path, age_years=age, sex=normalise_sex(row.get("sex")),
            view=normalise_view(row.get("view")),
            patient_id=row.get("patient_id") or f"{src}:{row['path']}",
            findings=tuple(f for f in (row.get("findings") or "").split("|") if f), source=src,
        ))
    if wanted is not None and not samples:
        raise ValueError(f"manifest: no rows with source in {sorted(wanted)} in {table}")
    logger.info("manifest: %d images, %d skipped (no age or file)", len(samples), skipped)
    return samples, "; ".join(part for parts in licences.values() for part in parts)
