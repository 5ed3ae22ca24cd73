"""The ``--engine ray`` branch of ``xrayage predict`` (kept apart so the local path stays thin)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


def run_ray(inputs: tuple[str, ...], output: Path | None, model: str | None, tta: bool,
            batch_size: int, threads: int | None, address: str | None,
            num_workers: int | None, per_image_files: bool, allow: tuple[str, ...] = ()
            ) -> None:
    """Check the options that the Ray engine does not support, run it, print the summary."""
    if output is None:
        raise click.UsageError("--engine ray needs -o OUT.csv or OUT.jsonl (rows are merged "
                               "from shards into it)")
    if per_image_files:
        raise click.UsageError("--heatmaps, --sr, --sc, --fhir and --report need --engine local")
    try:
        from ..engines.ray_engine import RayOptions, predict_ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise click.UsageError(str(exc)) from exc
    options = RayOptions(address=address, num_workers=num_workers,
                         actor_cpus=float(threads or 1), allow=allow)
    try:
        counts = predict_ray(inputs, output, model=model, tta=tta, batch_size=batch_size,
                             options=options)
    except ImportError as exc:
        raise click.UsageError(str(exc)) from exc
    already = counts.pop("already", 0)
    duplicate = counts.pop("duplicate", 0)
    done = sum(counts.values())
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    Console(stderr=True).print(
        f"xrayage (ray): {done} inputs ({summary or 'nothing new'})"
        + (f"; {already} already in {output}" if already else "")
        + (f"; {duplicate} duplicate rows from retries dropped" if duplicate else ""))
