"""``xrayage calibrate MODEL_DIR HELD_OUT.csv``: fit bias correction and conformal interval.

The predictions must come from images the model never trained on (a held-out split
or out-of-fold predictions): a CSV/JSONL from ``xrayage predict`` (``xray_age``,
``chronological_age``) or ``xrayage evaluate --predictions`` (``xray_age``,
``age_years``, ``patient_id``). The fitted values are written into the
model card; the ONNX file is untouched.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from ..calibration import calibrate_card
from ..card import ModelCard


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (xray_age, chronological_age, group) for rows that have both ages."""
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    pred, age, group = [], [], []
    for row in rows:
        try:
            p = float(row["xray_age"])
            a = float(row.get("chronological_age") or row["age_years"])
        except (KeyError, TypeError, ValueError):
            continue
        pred.append(p)
        age.append(a)
        group.append(str(row.get("patient_id") or row["path"]))
    if len(pred) < 20:
        raise click.BadParameter(f"{path}: {len(pred)} rows with both ages; need at least 20")
    return np.array(pred), np.array(age), group


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("predictions", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--coverage", default=0.9, show_default=True, type=click.FloatRange(0.5, 0.99))
@click.option("--seed", default=0, show_default=True)
def calibrate(model_dir: Path, predictions: Path, coverage: float, seed: int) -> None:
    """Fit the age-bias correction and the conformal interval from held-out predictions."""
    pred, age, group = read_predictions(predictions)
    card = calibrate_card(ModelCard.load(model_dir), pred, age, group, coverage, seed)
    card.save(model_dir)
    bc, cal = card.bias_correction, card.conformal
    assert bc is not None and cal is not None
    click.echo(f"bias correction: xray_age ~ {bc.slope:.3f} * age + {bc.intercept:.2f} (n={bc.n})")
    click.echo(f"conformal {coverage:.0%} interval: ± {cal.quantile:.2f} y (n={cal.n}); "
               f"split-half empirical coverage {cal.empirical_coverage:.3f}")
