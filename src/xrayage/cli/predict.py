"""``xrayage predict INPUT...``: X-ray age for files, folders and CSV manifests."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ClinicalOutputError
from ..estimate import AgeEstimate
from ..explain import save_overlay
from ..inputs import RowIds, expand_rows
from ..outputs import ClinicalDirs, write_clinical
from ..pipeline import PredictInput
from ..predict import XRayAge
from ..results import ResultWriter, skip_done


def heatmap_name(path: str) -> str:
    """A collision-free PNG name for an input path."""
    digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:8]
    return f"{Path(path).stem}-{digest}.png"


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write rows to OUT.csv or OUT.jsonl (resumable); default: JSON lines to stdout.")
@click.option("--model", "model_name", default=None,
              help="Bundled model name or model directory (default: the bundled model).")
@click.option("--heatmaps", type=click.Path(path_type=Path, file_okay=False),
              help="Write a CAM overlay PNG per image into this folder.")
@click.option("--sr", "sr_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write a DICOM SR (TID 1500) per DICOM input into this folder.")
@click.option("--sc", "sc_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write a DICOM Secondary Capture (heat map + result) per DICOM input.")
@click.option("--fhir", "fhir_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write a FHIR R4 Observation (JSON) per estimate into this folder.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write a one-page HTML report per input into this folder.")
@click.option("--tta", is_flag=True, help="Average test-time augmented views (4x slower).")
@click.option("--allow", "allow", multiple=True, metavar="CODE",
              help="Relax a refusal to a warning, by its code (e.g. lateral_view, "
                   "content_lateral, content_child); repeatable. Default: every check refuses.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="ONNX Runtime threads (default: all cores).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: a Ray cluster (needs -o and the 'cluster' extra; see docs/scale.md).")
@click.option("--address", default=None,
              help="Ray cluster: auto or ray://HOST:10001 (default: start a local Ray).")
@click.option("--num-workers", default=None, type=click.IntRange(1, 100_000),
              help="Ray inference actors (default: one per GPU, else half the CPUs).")
@click.option("--patient-id", default=None,
              help="FHIR subject of non-DICOM inputs (a manifest's patient_id column wins).")
@click.option("--study-uid", default=None,
              help="FHIR derivedFrom study of non-DICOM inputs (manifest column study_uid).")
@click.option("--fhir-patient-system", default=None, metavar="URI",
              help="system of the FHIR patient identifier (default "
                   "urn:xrayage:patient-id; use your hospital's MRN system).")
def predict(inputs: tuple[str, ...], output: Path | None, model_name: str | None,
            heatmaps: Path | None, sr_dir: Path | None, sc_dir: Path | None,
            fhir_dir: Path | None, report_dir: Path | None, tta: bool,
            allow: tuple[str, ...], batch_size: int,
            threads: int | None, engine: str, address: str | None,
            num_workers: int | None, patient_id: str | None = None,
            study_uid: str | None = None, fhir_patient_system: str | None = None) -> None:
    """Estimate X-ray age for INPUTS: files, folders (recursive) and CSV manifests.

    A manifest has a 'path' column (relative to the CSV) and optional 'age_years' and
    'sex' columns, which override the image header. --sr and --sc need DICOM inputs
    (others get a warning and their row as usual); they need the 'clinical' extra.
    """
    if output is not None and output.suffix.lower() not in (".csv", ".jsonl"):
        raise click.BadParameter("must end in .csv or .jsonl", param_hint="--output")
    if engine == "ray":
        from .predict_ray import run_ray

        clinical_dirs = (heatmaps, sr_dir, sc_dir, fhir_dir, report_dir)
        run_ray(inputs, output, model_name, tta, batch_size, threads, address, num_workers,
                any(d is not None for d in clinical_dirs), allow)
        return
    estimator = XRayAge.load(model_name, threads=threads, tta=tta, batch_size=batch_size,
                             allow=allow)
    writer = ResultWriter(output) if output is not None else None
    done: Counter[str] = Counter(writer.done_counts) if writer is not None else Counter()
    if heatmaps is not None:
        heatmaps.mkdir(parents=True, exist_ok=True)
    clinical = ClinicalDirs(sr_dir, sc_dir, fhir_dir, report_dir)
    ids: deque[RowIds] = deque()  # in input order, as predict_many yields
    items = _todo(inputs, done, ids, patient_id, study_uid)
    total = _count(inputs, done)
    console = Console(stderr=True)
    counts = {"ok": 0, "warn": 0, "reject": 0, "error": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False,
                      disable=not console.is_terminal) as progress:
            task = progress.add_task("X-ray age", total=total)
            heat = heatmaps is not None or clinical.needs_heatmap
            keep = heatmaps is not None or clinical.needs_pixels
            for est in estimator.predict_many(items, heatmap=heat, keep_radiograph=keep):
                _emit(est, writer, heatmaps, estimator, clinical, ids.popleft(),
                      fhir_patient_system)
                counts[est.qc_status.value] = counts.get(est.qc_status.value, 0) + 1
                progress.advance(task)
    finally:
        if writer is not None:
            writer.close()
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    console.print(f"xrayage: {sum(counts.values())} inputs ({summary or 'nothing new'})"
                  + (f"; {done.total()} already in {output}"
                     if writer is not None and done.total() else ""))


def _todo(inputs: tuple[str, ...], done: Counter[str], ids: deque[RowIds],
          patient_id: str | None, study_uid: str | None) -> Iterator[PredictInput]:
    """The rows not yet written (repeats included), queuing each one's ids."""
    rows = expand_rows(inputs, patient_id=patient_id, study_uid=study_uid)
    for item, row_ids in skip_done(rows, done, lambda row: row[0].name):
        ids.append(row_ids)
        yield item


def _emit(est: AgeEstimate, writer: ResultWriter | None, heatmaps: Path | None,
          estimator: XRayAge, clinical: ClinicalDirs, row_ids: RowIds | None = None,
          fhir_system: str | None = None) -> None:
    if heatmaps is not None and est.heatmap is not None and est.radiograph is not None:
        save_overlay(heatmaps / heatmap_name(est.path), est.radiograph.pixels, est.heatmap,
                     estimator.card.preprocessing)
    if clinical.any:
        write_clinical(est, estimator.card, replace(clinical, fhir=None))
    if clinical.fhir is not None:
        _write_fhir(est, estimator, clinical.fhir, row_ids or RowIds(), fhir_system)
    record = est.to_record()
    if writer is not None:
        writer.write(record)
    else:
        click.echo(json.dumps(record))
        sys.stdout.flush()


def _write_fhir(est: AgeEstimate, estimator: XRayAge, folder: Path, row_ids: RowIds,
                system: str | None) -> None:
    from ..outputs._common import output_name
    from ..outputs.fhir import write_fhir

    folder.mkdir(parents=True, exist_ok=True)
    try:
        write_fhir(est, estimator.card, folder / output_name(est.path, ".fhir.json"),
                   patient_system=system, patient_id=row_ids.patient_id,
                   study_uid=row_ids.study_uid)
    except ClinicalOutputError as exc:
        logging.getLogger("xrayage.outputs").warning("%s", exc)


def _count(inputs: tuple[str, ...], done: Counter[str],
           limit: int = 1_000_000) -> int | None:
    """Number of inputs still to do, if it can be counted cheaply (else None)."""
    rows = (item for item, _ in expand_rows(inputs))
    remaining = islice(skip_done(rows, done), limit)
    n = sum(1 for _ in remaining)
    return None if n >= limit else n
