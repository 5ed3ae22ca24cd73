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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class HeldOut:
    """Held-out predictions read by :func:`read_predictions`, one entry per row."""

    xray_age: np.ndarray
    age_years: np.ndarray
    groups: list[str]
    views: list[str | None]
    sexes: list[str | None]
    fold: list[int] | None


def read_predictions(path: Path) -> HeldOut:
    """Read the rows that have both ages.

    The group is the ``patient_id`` (else the ``path``): the interval's cross-validation
    never splits one. ``view`` and ``sex`` are read where present (the interval is per
    view and its coverage reported by sex), and ``fold`` when every row has one (an
    out-of-fold file: its folds are the outer folds of the interval's validation). The age
    is ``age_years``, or where that is empty the legacy ``chronological_age``.

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
    kept: list[dict[str, Any]] = []
    legacy = 0
    for row in rows:
        p, a = _number(row.get("xray_age")), _number(row.get("age_years"))
        if a is None and (a := _number(row.get(LEGACY_AGE_COLUMN))) is not None:
            legacy += 1
        if p is None or a is None:
            continue
        pred.append(p)
        age.append(a)
        kept.append(row)
    if legacy:
        warnings.warn(f"{path}: {legacy} ages read from the column {LEGACY_AGE_COLUMN!r}, "
                      "called 'age_years' since xrayage 0.2; rename it, as the old name "
                      "will stop being read", XRayAgeDeprecationWarning, stacklevel=2)
    if len(pred) < 20:
        raise click.BadParameter(f"{path}: {len(pred)} rows with both ages; need at least 20")
    folds = [_number(r.get("fold")) for r in kept]
    return HeldOut(
        np.array(pred), np.array(age),
        groups=[str(r.get("patient_id") or r.get("path") or i) for i, r in enumerate(kept)],
        views=[str(r["view"]) if r.get("view") else None for r in kept],
        sexes=[str(r["sex"]) if r.get("sex") else None for r in kept],
        fold=None if None in folds else [int(f) for f in folds if f is not None])


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
    held = read_predictions(predictions)
    card = calibrate_card(ModelCard.load(model_dir), xray_age=held.xray_age,
                          age_years=held.age_years, groups=held.groups, views=held.views,
                          sexes=held.sexes, fold=held.fold, coverage=coverage, seed=seed)
    bc, cal = card.bias_correction, card.conformal
    if bc is None or cal is None:  # calibrate_card sets both; never saved half-done
        raise click.ClickException("calibration failed: no bias correction or interval")
    target = model_dir if out_dir is None else copy_model(model_dir, out_dir)
    card.save(target)
    click.echo(f"calibrated model: {target}")
    click.echo(f"bias correction: xray_age ~ {bc.slope:.3f} * age + {bc.intercept:.2f} (n={bc.n})")
    views = ", ".join(f"{v} ± {q:.2f}" for v, q in cal.view_quantiles.items())
    click.echo(f"{coverage:.0%} interval for the chronological age: centre stretched "
               f"x{cal.centre_slope:.2f}, ± {cal.quantile:.2f} y{f' ({views})' if views else ''}"
               f" (n={cal.n})")
    bands = ", ".join(f"{k} {v['coverage']:.2f}" for k, v in cal.rates["by_age_band"].items())
    click.echo(f"out-of-fold coverage {cal.rates['coverage']:.3f}, mean width "
               f"{cal.rates['mean_width']:.1f} y; by age band: {bands}")
