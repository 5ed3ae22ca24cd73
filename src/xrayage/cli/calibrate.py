"""``xrayage calibrate MODEL_DIR HELD_OUT.csv``: fit bias correction and conformal interval.

The predictions must come from images the model never trained on (a held-out split
or out-of-fold predictions), made with ``xrayage predict`` so they carry
``xray_age`` and ``chronological_age``. The fitted values are written into the
model card; the ONNX file is untouched.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from ..calibration import empirical_coverage, fit_bias_correction, fit_conformal, interval
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
            p, a = float(row["xray_age"]), float(row["chronological_age"])
        except (KeyError, TypeError, ValueError):
            continue
        pred.append(p)
        age.append(a)
        group.append(str(row.get("patient_id") or row["path"]))
    if len(pred) < 20:
        raise click.BadParameter(f"{path}: {len(pred)} rows with both ages; need at least 20")
    return np.array(pred), np.array(age), group


def split_coverage(pred: np.ndarray, age: np.ndarray, group: list[str], coverage: float,
                   seed: int) -> float:
    """Coverage measured out of sample: fit on one half of the groups, test on the other,
    then swap, and average."""
    rng = np.random.default_rng(seed)
    names = sorted(set(group))
    half = set(rng.permutation(names)[: len(names) // 2].tolist())
    in_a = np.array([g in half for g in group])
    results = []
    for fit_mask in (in_a, ~in_a):
        cal = fit_conformal(pred[fit_mask], age[fit_mask], coverage=coverage)
        bounds = np.array([interval(cal, p) for p in pred[~fit_mask]])
        results.append(empirical_coverage(bounds[:, 0], bounds[:, 1], age[~fit_mask]))
    return float(np.mean(results))


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("predictions", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--coverage", default=0.9, show_default=True, type=click.FloatRange(0.5, 0.99))
@click.option("--seed", default=0, show_default=True)
def calibrate(model_dir: Path, predictions: Path, coverage: float, seed: int) -> None:
    """Fit the age-bias correction and the conformal interval from held-out predictions."""
    pred, age, group = read_predictions(predictions)
    card = ModelCard.load(model_dir)
    card.bias_correction = fit_bias_correction(pred, age)
    cal = fit_conformal(pred, age, coverage=coverage)
    measured = split_coverage(pred, age, group, coverage, seed)
    card.conformal = type(cal)(coverage=cal.coverage, quantile=cal.quantile, scaled=False,
                               n=cal.n, empirical_coverage=round(measured, 4))
    card.save(model_dir)
    bc = card.bias_correction
    click.echo(f"bias correction: xray_age ~ {bc.slope:.3f} * age + {bc.intercept:.2f} (n={bc.n})")
    click.echo(f"conformal {coverage:.0%} interval: ± {cal.quantile:.2f} y (n={cal.n}); "
               f"split-half empirical coverage {measured:.3f}")
