"""``xrayage evaluate DATASET``: score an ONNX model on a dataset (no torch needed)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import click

from ..errors import XRayAgeError, XRayAgeInputError


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Report a plain ValueError (bad spec, option or data) as a bad-input error (exit 2)."""
    try:
        yield
    except XRayAgeError:
        raise
    except ValueError as exc:
        raise XRayAgeInputError(str(exc)) from exc


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@click.command()
@click.argument("dataset")
@click.option("--model", default=None, help="Bundled model name or model directory.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (n, mae, rmse, bias, r, r2, icc, mae_no_skill, ...).")
@click.option("--plots", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write scatter.png and bland_altman.png here.")
@click.option("--predictions", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write per-image predictions as CSV.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None,
              help="Only this split's patients (needs --run-dir).")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--adults-only", is_flag=True)
@click.option("--all-views", is_flag=True)
@click.option("--no-qc", is_flag=True, help="Score images the quality check would reject.")
@click.option("--tta", is_flag=True, help="Average test-time augmented views, as predict --tta.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--threads", type=int, default=None)
def evaluate(dataset: str, model: str | None, as_json: bool, plots: Path | None,
             predictions: Path | None, split: str | None, run_dir: Path | None,
             adults_only: bool, all_views: bool, no_qc: bool, tta: bool, batch_size: int,
             threads: int | None) -> None:
    """Evaluate a model on DATASET (ADAPTER:PATH[?opts], e.g. manifest:data/manifest.csv,
    or a manifest CSV's path).

    Images go through the same stages as ``xrayage predict``: the same ones are rejected
    (children, laterals, non-chest ...), counted by reason, and not scored.
    """
    from ..evaluate import evaluate as run_evaluation
    from ..evaluate import excluded, plot

    with input_errors():
        result = run_evaluation(dataset, model, split=split, run_dir=run_dir,
                                batch_size=batch_size, qc=not no_qc, all_views=all_views,
                                adults_only=adults_only, threads=threads, tta=tta,
                                progress=True)
    if plots is not None and result.predictions:
        plot(result, plots)
    if predictions is not None:
        with open(predictions, "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["path", "patient_id", "age_years", "xray_age",
                                             "age_interval_lower", "age_interval_upper",
                                             "sex", "view"])
            writer.writeheader()
            writer.writerows(result.predictions)
    if as_json:
        click.echo(json.dumps(_clean(result.summary())))
        return
    m = result.metrics
    click.echo(f"images scored {m['n']}, not scored {len(result.problems)}")
    for why, count in excluded(result.problems).items():
        click.echo(f"  not scored: {count} {why}")
    for key in ("mae", "rmse", "bias", "r", "r2", "icc", "age_mean", "age_sd", "mae_no_skill"):
        click.echo(f"{key:<13} {m[key]:8.3f}")
    for name, levels in result.groups.items():
        for level, g in levels.items():
            click.echo(f"{name}={level:<10} n={g['n']:<6} mae={g['mae']:7.3f} "
                       f"bias={g['bias']:7.3f}")
    if (rates := m.get("interval")) is not None:
        bands = ", ".join(f"{k} {v['coverage']:.2f} (n={v['n']})"
                          for k, v in rates["by_age_band"].items())
        click.echo(f"interval for the chronological age: coverage {rates['coverage']:.3f}, "
                   f"mean width {rates['mean_width']:.1f} y; by age band {bands}")
    for note in result.notes:
        click.echo(f"note: {note}")
