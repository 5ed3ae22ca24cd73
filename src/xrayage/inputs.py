"""Expand command-line inputs (files, folders, CSV manifests) into prediction inputs.

Inputs are listed lazily, so a folder or manifest of millions never sits in memory.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .pipeline import PredictInput

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic"}


def is_dicom_file(path: Path) -> bool:
    """True if the file has the DICOM Part 10 marker, whatever its name."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def walk_folder(folder: Path) -> Iterator[Path]:
    """Yield radiograph files under `folder`, recursively, in sorted order.

    PNG/JPEG are found by suffix; DICOM by content (archives often have no suffix).
    Hidden files and folders are skipped.
    """
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path):
                yield path


@dataclass(frozen=True)
class RowIds:
    """Identifiers of one input row for the clinical outputs of a non-DICOM input.

    From manifest columns ``patient_id`` and ``study_uid``, else from
    ``xrayage predict --patient-id/--study-uid``; a DICOM header's own are used when
    both are empty.
    """

    patient_id: str | None = None
    study_uid: str | None = None


def read_manifest(csv_path: Path) -> Iterator[PredictInput]:
    """Yield inputs from a CSV with a ``path`` column (relative to the CSV's folder).

    Optional ``age_years`` (or ``age``), ``sex`` and ``view`` (DICOM ViewPosition, e.g.
    ``PA``) columns override the header. Every row is one input, repeats included.
    """
    for item, _ in read_manifest_rows(csv_path):
        yield item


def read_manifest_rows(csv_path: Path) -> Iterator[tuple[PredictInput, RowIds]]:
    """As :func:`read_manifest`, with each row's ``patient_id``/``study_uid`` columns."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: a manifest needs a 'path' column")
        for row in reader:
            rel = (row.get("path") or "").strip()
            if not rel:
                continue
            path = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
            view = (row.get("view") or "").strip().upper() or None
            ids = RowIds((row.get("patient_id") or "").strip() or None,
                         (row.get("study_uid") or "").strip() or None)
            yield (PredictInput(str(path), str(path), _age(row), _sex(row.get("sex")), view),
                   ids)


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[PredictInput]:
    """Yield a :class:`PredictInput` for every file, folder entry and manifest row."""
    for item, _ in expand_rows(inputs):
        yield item


def expand_rows(inputs: Iterable[str | os.PathLike[str]], *, patient_id: str | None = None,
                study_uid: str | None = None) -> Iterator[tuple[PredictInput, RowIds]]:
    """As :func:`expand_inputs`, with each row's :class:`RowIds` (manifest columns
    first, then ``patient_id``/``study_uid`` given here)."""
    default = RowIds(patient_id, study_uid)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for file in walk_folder(path):
                yield PredictInput(str(file), str(file)), default
        elif path.suffix.lower() == ".csv" and path.is_file():
            for item, ids in read_manifest_rows(path):
                yield item, RowIds(ids.patient_id or patient_id, ids.study_uid or study_uid)
        else:
            yield PredictInput(str(path), str(path)), default


def _age(row: dict[str, str]) -> float | None:
    for key in ("age_years", "age"):
        text = (row.get(key) or "").strip()
        if text:
            try:
                value = float(text)
            except ValueError:
                return None
            return value if math.isfinite(value) else None
    return None


def _sex(text: str | None) -> str | None:
    value = (text or "").strip().upper()[:1]
    return value if value in ("M", "F", "O") else None
