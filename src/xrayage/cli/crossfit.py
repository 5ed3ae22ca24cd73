"""``xrayage crossfit``: out-of-fold X-ray age from k patient-disjoint models."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--data", "data", multiple=True, required=True,
              help="Dataset spec, as for `xrayage train` (repeatable).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Run folder: fold0/ ... and oof_predictions.csv (+ .provenance.json).")
@click.option("-k", "--folds", "k", default=5, show_default=True, type=click.IntRange(2, 50))
@click.option("--backbone", default="efficientnet_b0", show_default=True)
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(32, 2048))
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--max-steps", default=-1, show_default=True, type=int,
              help="Stop each fold after this many steps (-1: by epochs).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--loss", default="l1", show_default=True,
              type=click.Choice(["l1", "smooth_l1", "gaussian_nll"]))
@click.option("--init-weights", default=None, help="As for `xrayage train`.")
@click.option("--head", type=click.Choice(["trained", "ridge"]), default="trained",
              show_default=True, help="As for `xrayage train`.")
@click.option("--feature-levels", default=None, help="As for `xrayage train`.")
@click.option("--taps", default=None, help="As for `xrayage train`.")
@click.option("--grid", default=1, show_default=True, type=click.IntRange(1, 16),
              help="As for `xrayage train`.")
@click.option("--ridge-views", default=0, show_default=True, type=click.IntRange(0, 16),
              help="As for `xrayage train`.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--adults-only", is_flag=True)
@click.option("--cache-dir", default=None, help="Shared preprocessed cache (default OUT/cache).")
@click.option("--num-workers", default=2, show_default=True, type=click.IntRange(0))
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="ONNX Runtime threads for the predictions.")
@click.option("--no-progress", is_flag=True)
def crossfit(data: tuple[str, ...], out: Path, k: int, backbone: str, image_size: int,
             epochs: int, max_steps: int, batch_size: int, lr: float, loss: str,
             init_weights: str | None, head: str, feature_levels: str | None,
             taps: str | None, grid: int, ridge_views: int, seed: int, adults_only: bool,
             cache_dir: str | None, num_workers: int, threads: int | None,
             no_progress: bool) -> None:
    """Train k models on patient-disjoint folds; predict each image with the model that never
    saw it. The output feeds `xrayage analyze`, which then trusts it as out-of-fold."""
    from ..train import require_torch

    require_torch("xrayage crossfit")
    from ..train.crossfit import crossfit as run_crossfit
    from ..train.fit import TrainConfig
    from .train import parse_levels, parse_taps

    cfg = TrainConfig(data=list(data), out=str(out), backbone=backbone, image_size=image_size,
                      epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                      loss=loss, init_weights=init_weights, head=head,
                      feature_levels=parse_levels(feature_levels), taps=parse_taps(taps),
                      grid=grid,
                      ridge_views=ridge_views, seed=seed, adults_only=adults_only,
                      cache_dir=cache_dir, num_workers=num_workers, progress=not no_progress)
    path = run_crossfit(cfg, k=k, threads=threads)
    click.echo(f"xrayage: out-of-fold predictions {path}", err=True)
