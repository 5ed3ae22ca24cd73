"""``xrayage import-torchscript [FILE] --preset riken --out DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from ..importer import PRESETS, TOLERANCE_YEARS, find_published_file, import_torchscript


@click.command("import-torchscript")
@click.argument("file", required=False,
                type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="riken", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--opset", default=17, show_default=True)
@click.option("--verify-images", type=click.Path(path_type=Path, exists=True),
              help="Radiographs (a folder or a file) on which ONNX and torch must agree "
                   "(default: synthetic radiograph-like images).")
@click.option("--weights", type=click.Choice(sorted(TOLERANCE_YEARS)), default="float32",
              show_default=True, help="float16: store the ONNX weights in half precision "
                                      "(half the file; arithmetic stays float32).")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest ONNX-vs-torch difference accepted, in years "
                   "[default: 0.01 (float32), 0.1 (float16)].")
def import_torchscript_cmd(file: Path | None, preset: str, out_dir: Path, opset: int,
                           verify_images: Path | None, weights: str,
                           tolerance: float | None) -> None:
    """Wrap a trusted TorchScript age model (e.g. RIKEN's SENet154) as an ONNX model dir.

    Loading TorchScript runs code from FILE: import only files you trust. Without FILE,
    the preset's published file is looked for in TorchXRayVision's cache folder
    (~/.torchxrayvision/models_data/); nothing is downloaded.
    """
    if file is None:
        file = find_published_file(preset)
        click.echo(f"using {file}", err=True)
    card = import_torchscript(file, out_dir, preset=preset, opset=opset,
                              verify_images=verify_images, weights=weights,
                              tolerance=tolerance)
    if card.onnx_sha256 is None:
        raise click.ClickException(f"{out_dir}: the import recorded no ONNX sha256 in its card")
    click.echo(f"wrote {out_dir} ({card.name}, {weights} weights, ONNX sha256 "
               f"{card.onnx_sha256[:12]}…, max |ONNX - torch| "
               f"{card.extra['export_max_abs_diff_years']:.1e} y); file identity: "
               f"{card.extra['source_identity']}")
    click.echo(f"measure it: xrayage evaluate MANIFEST.csv --model {out_dir}; calibrate it: "
               f"xrayage calibrate {out_dir} HELD_OUT_PREDICTIONS.csv --out CALIBRATED_DIR")
