"""``xrayage import-torchscript FILE --preset riken --out DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from ..importer import PRESETS, import_torchscript


@click.command("import-torchscript")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="riken", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--opset", default=17, show_default=True)
def import_torchscript_cmd(file: Path, preset: str, out_dir: Path, opset: int) -> None:
    """Wrap a trusted TorchScript age model (e.g. RIKEN's SENet154) as an ONNX model dir."""
    card = import_torchscript(file, out_dir, preset=preset, opset=opset)
    if card.onnx_sha256 is None:
        raise click.ClickException(f"{out_dir}: the import recorded no ONNX sha256 in its card")
    click.echo(f"wrote {out_dir} ({card.name}, ONNX sha256 {card.onnx_sha256[:12]}…); "
               f"use it with: xrayage predict --model {out_dir} ...")
