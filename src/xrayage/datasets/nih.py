"""NIH ChestX-ray14 (Wang et al. 2017): ``Data_Entry_2017*.csv`` joined to the image folders.

The official layout is ``images_001/images/*.png`` ... ``images_012/images/*.png`` (or one flat
folder) beside ``Data_Entry_2017_v2020.csv``, ``train_val_list.txt`` and ``test_list.txt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .base import Sample, normalise_sex, normalise_view, read_csv_rows, require_columns

logger = logging.getLogger(__name__)

LICENCE = "NIH Clinical Center: public, no restrictions on use (cite Wang et al. CVPR 2017)"
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
           "View Position")


def find_table(root: Path) -> Path:
    """Return the newest ``Data_Entry_2017*.csv[.gz]`` in `root` or its parent."""
    for folder in (root, root.parent):
        found = sorted(folder.glob("Data_Entry_2017*.csv*"))
        if found:
            return found[-1]
    raise ValueError(
        f"no Data_Entry_2017*.csv in {root} or its parent: pass it as nih:{root}?csv=FILE"
    )


def index_images(root: Path) -> dict[str, Path]:
    """Map every ``*.png`` file name under `root` (any depth) to its path."""
    found: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".png"):
                found.setdefault(name, Path(dirpath) / name)
    return found


def parse_age(text: str) -> float | None:
    """Parse ``57`` or the 2017 release's ``057Y``/``006M``/``010D`` into years."""
    text = (text or "").strip().upper()
    if not text:
        return None
    scale = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}.get(text[-1])
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        return None


def load(root: Path, csv: str | None = None, subset: str = "all") -> list[Sample]:
    """Read NIH ChestX-ray14 samples whose image file is present under `root`.

    Parameters
    ----------
    root : path
        Folder holding the images (any depth: ``images_*/images/`` or flat).
    csv : str, optional
        ``Data_Entry_2017*.csv[.gz]``; by default found in `root` or its parent.
    subset : {'all', 'train_val', 'test'}
        Keep only the images named in ``train_val_list.txt`` or ``test_list.txt``
        (searched in `root` and its parent; an error if missing).

    Returns
    -------
    list of Sample
        Patient ids are ``nih:<Patient ID>``; ages over 120 (a few data-entry errors in the
        2017 release) are dropped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"nih: {root} is not a folder")
    table = Path(csv) if csv else find_table(root)
    keep: set[str] | None = None
    if subset != "all":
        if subset not in ("train_val", "test"):
            raise ValueError(f"nih: subset must be all, train_val or test, not {subset!r}")
        keep = _read_list(root, f"{subset}_list.txt")
    images = index_images(root)
    samples, missing, bad_age = [], 0, 0
    for i, row in enumerate(read_csv_rows(table)):
        if i == 0:
            require_columns(row, COLUMNS, table)
        name = row["Image Index"]
        if keep is not None and name not in keep:
            continue
        path = images.get(name)
        if path is None:
            missing += 1
            continue
        age = parse_age(row["Patient Age"])
        if age is None or age > 120:
            bad_age += 1
            continue
        samples.append(Sample(
            path=path, age_years=age, sex=normalise_sex(row["Patient Gender"]),
            view=normalise_view(row["View Position"]), patient_id=f"nih:{int(row['Patient ID'])}",
            findings=tuple(f for f in row["Finding Labels"].split("|") if f), source="nih_cxr14",
        ))
    logger.info("nih: %d images joined, %d table rows without a file, %d bad ages",
                len(samples), missing, bad_age)
    return samples


def _read_list(root: Path, name: str) -> set[str]:
    for folder in (root, root.parent):
        if (folder / name).is_file():
            return set((folder / name).read_text().split())
    raise ValueError(f"nih: {name} not found in {root} or its parent")


def has_official_lists(root: Path) -> bool:
    """True if ``train_val_list.txt`` and ``test_list.txt`` are beside the images."""
    return any((f / "test_list.txt").is_file() and (f / "train_val_list.txt").is_file()
               for f in (Path(root), Path(root).parent))
