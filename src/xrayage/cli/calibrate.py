"""``xrayage calibrate MODEL_DIR HELD_OUT.csv``: fit bias correction and conformal interval.

The predictions must come from images the model never trained on (a held-out split
or out-of-fold predictions): a CSV/JSONL from ``xrayage predict``, ``xrayage crossfit``,
``xrayage evaluate --predictions`` or a ridge probe's ``probe_oof.csv`` (``xray_age``,
``age_years``, and ``patient_id`` where known). Files written before 0.2 name the age
``chronological_age``; that column is still read, with a deprecation warning. The fitted
values are written into the model card of a new model directory (``--out DIR``, the
ONNX files copied unchanged), or with ``--in-place`` into ``MODEL_DIR``'s own card: a model
never changes in place unless asked.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..calibration import calibrate_card
from ..card import ModelCard
from ..errors import XRayAgeDeprecationWarning

LEGACY_AGE_COLUMN = "chronological_age"
"""The name of ``age_years`` in prediction files before 0.2; still read, with a warning."""


def _number(value: Any) -> float | None:
    """A finite float from a CSV cell or JSON value, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (xray_age, age_years, group) for rows that have both ages.

    The group is the ``patient_id`` (else the ``path``), for the split-half coverage.
    The age is ``age_years``, or where that is empty the legacy ``chronological_age``.

    Warns
    -----
    XRayAgeDeprecationWarning
        Some ages were read from the legacy ``chronological_age`` column.
    """
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    pred: list[float] = []
    age: list[float] = []
    group: list[str] = []
    legacy = 0
    for row in rows:
        p, a = _number(row.get("xray_age")), _number(row.get("age_years"))
        if a is None and (a := _number(row.get(LEGACY_AGE_COLUMN))) is not None:
            legacy += 1
        if p is None or a is None:
            continue
        pred.append(p)
        age.append(a)
        group.append(str(row.get("patient_id") or row.get("path") or len(group)))
    if legacy:
        warnings.warn(f"{path}: {legacy} ages read from the column {LEGACY_AGE_COLUMN!r}, "
                      "called 'age_years' since xrayage 0.2; rename it, as the old name "
                      "will stop being read", XRayAgeDeprecationWarning, stacklevel=2)
    if len(pred) < 20:
        raise click.BadParameter(f"{path}: {len(pred)} rows with both ages; need at least 20")
    return np.array(pred), np.array(age), group


def copy_model(model_dir: Path, out_dir: Path) -> Path:
    """Copy a model directory's files (ONNX graphs and all) into a new `out_dir`.

    Parameters
    ----------
    model_dir : Path
        The model read.
    out_dir : Path
        A directory that does not exist or is empty.

    Returns
    -------
    Path
        `out_dir`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
        elif item.is_dir():
            shutil.copytree(item, out_dir / item.name)
    return out_dir


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("predictions", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--coverage", default=0.9, show_default=True, type=click.FloatRange(0.5, 0.99))
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write the calibrated model here (a new directory; MODEL_DIR's files "
                   "copied, its card updated).")
@click.option("--in-place", is_flag=True,
              help="Overwrite MODEL_DIR's own model_card.json instead of writing --out.")
def calibrate(model_dir: Path, predictions: Path, coverage: float, seed: int,
              out_dir: Path | None, in_place: bool) -> None:
    """Fit the age-bias correction and the conformal interval from held-out predictions.

    The result goes into a new model directory (``--out DIR``) or, with ``--in-place``,
    into MODEL_DIR's card.
    """
    if (out_dir is None) == (not in_place):
        raise click.UsageError("give --out DIR (a new model directory) or --in-place "
                               "(overwrite MODEL_DIR's model card), exactly one")
    if out_dir is not None and (out_dir.exists() and any(out_dir.iterdir())):
        raise click.UsageError(f"--out {out_dir}: exists and is not empty")
    if out_dir is not None and out_dir.resolve() == model_dir.resolve():
        raise click.UsageError("--out is MODEL_DIR: use --in-place to overwrite its card")
    pred, age, group = read_predictions(predictions)
    card = calibrate_card(ModelCard.load(model_dir), xray_age=pred, age_years=age,
                          groups=group, coverage=coverage, seed=seed)
    bc, cal = card.bias_correction, card.conformal
    if bc is None or cal is None:  # calibrate_card sets both; never saved half-done
        raise click.ClickException("calibration failed: no bias correction or interval")
    target = model_dir if out_dir is None else copy_model(model_dir, out_dir)
    card.save(target)
    click.echo(f"calibrated model: {target}")
    click.echo(f"bias correction: xray_age ~ {bc.slope:.3f} * age + {bc.intercept:.2f} (n={bc.n})")
    click.echo(f"conformal {coverage:.0%} interval: ± {cal.quantile:.2f} y (n={cal.n}); "
               f"split-half empirical coverage {cal.empirical_coverage:.3f}")
