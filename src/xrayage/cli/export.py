"""``xrayage export CHECKPOINT --out DIR``: ONNX + model card, verified against torch."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Model directory to write (model.onnx, model_card.json).")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--name", default=None, help="Model name in the card (default: folder name).")
@click.option("--verify-image", "images", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Real radiograph for the ORT/torch check (default: the run's val images).")
@click.option("--no-val-metrics", is_flag=True, help="Skip scoring the validation split.")
@click.option("--fp16-weights", is_flag=True,
              help="Store weights as float16 (half the size, float32 compute), verified.")
@click.option("--unsafe-load", is_flag=True,
              help="Unpickle the checkpoint fully (only for checkpoints you trust).")
def export(checkpoint: Path, out: Path, opset: int, name: str | None, images: tuple[Path, ...],
           no_val_metrics: bool, fp16_weights: bool, unsafe_load: bool) -> None:
    """Export a training CHECKPOINT to an ONNX model directory."""
    from ..train import require_torch

    require_torch("xrayage export")
    from ..train.export import export as run_export
    from .evaluate import input_errors

    with input_errors():
        card = run_export(checkpoint, out, opset=opset, images=list(images) or None, name=name,
                          val_metrics=not no_val_metrics, unsafe=unsafe_load,
                          fp16_weights=fp16_weights)
    if card.onnx_sha256 is None:
        raise click.ClickException(f"{out}: the export recorded no ONNX sha256 in its card")
    check = card.extra["verification"]
    click.echo(f"wrote {out / card.onnx_file} (sha256 {card.onnx_sha256[:12]}...): "
               f"max |ORT - torch| {check['max_abs_age_diff']:.1e} y on {check['images']} images"
               + (f" ({check['max_abs_age_diff_fp16_weights']:.1e} y with float16 weights)"
                  if fp16_weights else ""))
