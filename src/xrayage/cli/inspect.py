"""``xrayage inspect FILE``: decoded metadata and the quality verdict of one radiograph."""

from __future__ import annotations

import json
from pathlib import Path

import click
from PIL import Image

from ..io import read_radiograph
from ..quality import check_quality


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--png",
    "png_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the decoded image as 8-bit PNG.",
)
def inspect(file: Path, as_json: bool, png_out: Path | None) -> None:
    """Show what xrayage reads from FILE (DICOM, PNG or JPEG) and its QC verdict."""
    rg = read_radiograph(file)
    report = check_quality(rg)
    record = {
        "file": file.name,
        **rg.metadata(),
        "qc_status": report.status.value,
        "qc_reasons": report.reasons,
        "qc_messages": report.messages,
    }
    if png_out is not None:
        Image.fromarray(rg.to_uint8()).save(png_out)
    if as_json:
        click.echo(json.dumps(record))
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        if key in ("qc_reasons", "qc_messages"):
            continue
        click.echo(f"{key:<{width}}  {'' if value is None else value}")
    for message in report.messages:
        click.echo(f"{'qc':<{width}}  {message}")
