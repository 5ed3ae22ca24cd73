"""``xrayage train``: train an X-ray age model with Lightning (needs the ``[train]`` extra)."""

from __future__ import annotations

from pathlib import Path

import click


def parse_levels(value: object) -> list[int] | None:
    """Parse ``--feature-levels`` (``"3,4"``) into a list of ints; None when not given."""
    if not value:
        return None
    try:
        return [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 3,4") from exc


def _devices(value: str) -> str | int:
    return int(value) if value.isdigit() else value


@click.command()
@click.option("--data", "data", multiple=True, required=True,
              help="Dataset spec ADAPTER:PATH[?opts] (nih, chexpert, padchest, mimic, manifest); "
                   "repeat to combine.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Run directory (split, spec, logs, checkpoints).")
@click.option("--backbone", default="efficientnet_b0", show_default=True, help="timm model name.")
@click.option("--image-size", type=int, default=256, show_default=True)
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--square", type=click.Choice(["crop", "pad"]), default="crop", show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--loss", type=click.Choice(["l1", "smooth_l1", "gaussian_nll"]), default="l1",
              show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--backbone-lr-mult", type=float, default=1.0, show_default=True)
@click.option("--freeze-stages", type=int, default=0, show_default=True)
@click.option("--feature-levels", default=None, help="Comma-separated levels, default last.")
@click.option("--taps", default=None,
              help="Comma-separated further backbone modules pooled into the head "
                   "(e.g. block3,block5,block7,block9).")
@click.option("--grid", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Average-pool each feature map over GRID x GRID cells (1: global average "
                   "pooling); the map sizes must divide by it.")
@click.option("--head", type=click.Choice(["trained", "ridge"]), default="trained",
              show_default=True,
              help="ridge: freeze the backbone and solve the linear head in closed form "
                   "(a linear probe; penalty by patient-grouped CV).")
@click.option("--ridge-views", type=click.IntRange(0, 16), default=0, show_default=True,
              help="With --head ridge: add this many randomly augmented views of each "
                   "training image to the fit (never to the CV score).")
@click.option("--ridge-crossfit", is_flag=True,
              help="With --head ridge: also score the whole recipe by nested, "
                   "patient-disjoint cross-fitting on the training images (RUN/probe_oof.csv); "
                   "the validation of a model trained on every image (--val-fraction 0).")
@click.option("--init-weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="timm state dict (.safetensors) to start from.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--adults-only", is_flag=True, help="Keep ages >= 18 only.")
@click.option("--min-age", type=float, default=None)
@click.option("--max-age", type=float, default=None)
@click.option("--all-views", is_flag=True, help="Keep lateral views too (default frontal only).")
@click.option("--hflip/--no-hflip", default=False, show_default=True,
              help="Random horizontal flips (off: the chest is not left-right symmetric).")
@click.option("--no-augment", is_flag=True, help="No augmentation (to check overfitting).")
@click.option("--max-steps", type=int, default=-1, help="Stop after this many steps (tests).")
@click.option("--patience", type=int, default=5, show_default=True, help="Early stopping.")
@click.option("--resume", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Lightning checkpoint to resume from (e.g. RUN/checkpoints/last.ckpt).")
@click.option("--num-workers", type=int, default=2, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Cache root (default RUN/cache); reuse one across runs.")
@click.option("--cache-workers", type=int, default=None, help="Decoding processes.")
@click.option("--cache-only", is_flag=True, help="Build the cache and the run files, then stop.")
@click.option("--accelerator", default="auto", show_default=True)
@click.option("--devices", default="auto", show_default=True)
@click.option("--strategy", default="auto", show_default=True, help="e.g. ddp")
@click.option("--num-nodes", type=int, default=1, show_default=True)
@click.option("--precision", default=None, help="Default: bf16-mixed/16-mixed on GPU, else 32.")
@click.option("--no-progress", is_flag=True)
def train(
    data: tuple[str, ...], out: Path, backbone: str, image_size: int, channels: str,
    square: str, epochs: int, loss: str, lr: float, weight_decay: float, batch_size: int,
    backbone_lr_mult: float, freeze_stages: int, feature_levels: str | None,
    taps: str | None, grid: int, head: str, ridge_views: int, ridge_crossfit: bool,
    init_weights: Path | None, seed: int, val_fraction: float, adults_only: bool,
    min_age: float | None, max_age: float | None, all_views: bool, hflip: bool,
    no_augment: bool, max_steps: int, patience: int, resume: Path | None, num_workers: int,
    cache_dir: Path | None, cache_workers: int | None, cache_only: bool, accelerator: str,
    devices: str, strategy: str, num_nodes: int, precision: str | None, no_progress: bool,
) -> None:
    """Train an X-ray age model on one or more datasets."""
    from ..train import require_torch

    require_torch("xrayage train")
    from ..train.fit import TrainConfig, train_model

    cfg = TrainConfig(
        data=list(data), out=str(out), backbone=str(backbone),
        image_size=image_size, channels=int(channels), square=str(square),
        epochs=epochs, loss=str(loss), lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, backbone_lr_mult=backbone_lr_mult,
        freeze_stages=freeze_stages, feature_levels=parse_levels(feature_levels),
        taps=parse_taps(taps), grid=grid, head=str(head),
        ridge_views=ridge_views, ridge_crossfit=bool(ridge_crossfit),
        init_weights=str(init_weights) if init_weights else None, seed=seed,
        val_fraction=val_fraction, adults_only=bool(adults_only),
        min_age=min_age, max_age=max_age, all_views=bool(all_views),
        hflip=bool(hflip), augment=not no_augment, max_steps=max_steps,
        patience=patience,
        resume=str(resume) if resume else None, num_workers=num_workers,
        cache_dir=str(cache_dir) if cache_dir else None,
        cache_workers=cache_workers, cache_only=bool(cache_only),
        accelerator=str(accelerator), devices=_devices(str(devices)),
        strategy=str(strategy), num_nodes=num_nodes,
        precision=precision, progress=not no_progress,
    )
    from .evaluate import input_errors

    with input_errors():
        best = train_model(cfg)
    click.echo(f"cache: {best}" if cache_only else f"best checkpoint: {best}")


def parse_taps(text: object) -> list[str] | None:
    """Parse ``--taps`` (``"block3,block5"``) into module names; None when not given."""
    names = [t.strip() for t in str(text or "").split(",") if t.strip()]
    return names or None
