"""``xrayage adapt MANIFEST --out DIR``: fit a model to a site's own labelled radiographs.

See :mod:`xrayage.adapt` and ``docs/adaptation.md``. The result is a model directory like
any other (``xrayage predict --model DIR``), with ``report.html`` and ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("manifest")
@click.option("--model", default=None, help="Base model: bundled name or directory "
              "(default: the bundled model).")
@click.option("--out", "out_dir", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="New (or empty) directory for the adapted model and its report.")
@click.option("--name", default=None, help="The adapted model's name (default BASE-site).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--coverage", type=click.FloatRange(0.5, 0.99), default=None,
              help="Interval coverage (default: the base model's).")
@click.option("--seed", default=0, show_default=True, help="Fold assignment.")
@click.option("--prior", default=None, metavar="SPEC",
              help="The base model's own training images (a manifest CSV or dataset spec; "
                   "for the bundled model its adult NIH ChestX-ray14 images): adds the "
                   "ridge pooled with them to the candidates (docs/adaptation.md).")
def adapt(manifest: str, model: str | None, out_dir: Path, name: str | None,
          threads: int | None, batch_size: int, coverage: float | None, seed: int,
          prior: str | None) -> None:
    """Adapt a model to MANIFEST's labelled radiographs (a manifest CSV or dataset spec:
    path, patient_id, age_years, optional sex and view).

    The site's images go through the normal quality checks; the head is refitted toward
    the base model's (or the model recalibrated), chosen by patient-grouped
    cross-validation, and measured by nested cross-fitting.
    """
    from ..adapt import adapt as run_adapt

    if out_dir.exists() and any(out_dir.iterdir()):
        raise click.UsageError(f"--out {out_dir}: exists and is not empty")
    try:
        result = run_adapt(manifest, out_dir, model=model, name=name, threads=threads,
                           batch_size=batch_size, coverage=coverage, seed=seed,
                           prior=prior)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    s = result.summary
    b, a = s["before"], s["after"]
    click.echo(f"adapted model: {result.directory}")
    click.echo(f"{s['local']['images']} images of {s['local']['patients']} patients "
               f"(left out: {s['local']['excluded'] or 'none'})")
    click.echo(f"recipe: {s['recipe']['label']}")
    click.echo(f"out-of-fold MAE: base {b['mae']:.2f} y "
               f"({b['ci95']['mae'][0]:.2f}-{b['ci95']['mae'][1]:.2f}) -> adapted "
               f"{a['mae']:.2f} y ({a['ci95']['mae'][0]:.2f}-{a['ci95']['mae'][1]:.2f})")
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
