"""``xrayage dicomweb``: answer a DICOMweb archive's chest radiographs with X-ray age SRs."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.replace("/", "-")) if "-" in value or "/" in value \
            else dt.datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected YYYY-MM-DD or YYYYMMDD") from None


@click.command("dicomweb")
@click.argument("url")
@click.option("--auth-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Credentials, mode 600: a line 'basic USER:PASSWORD' or 'bearer TOKEN'.")
@click.option("--state", "state_path", default="xrayage-dicomweb.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="State file: what is done (resumable, idempotent).")
@click.option("--modality", "modalities", multiple=True, default=("CR", "DX"),
              show_default=True, help="Series modality to fetch (repeatable).")
@click.option("--from", "date_from", callback=_date, metavar="DATE",
              help="Earliest study date (YYYY-MM-DD).")
@click.option("--to", "date_to", callback=_date, metavar="DATE",
              help="Latest study date (YYYY-MM-DD).")
@click.option("--since-last-run", is_flag=True,
              help="Only studies dated from the day before the last completed run on.")
@click.option("--sc", "send_sc", is_flag=True,
              help="Also store a Secondary Capture with the heat map and the result.")
@click.option("--watch", is_flag=True, help="Keep polling (implies --since-last-run after "
              "the first run if no date is given).")
@click.option("--interval", "interval_s", default=60.0, show_default=True,
              type=click.FloatRange(1, 86400), help="Seconds between polls with --watch.")
@click.option("--max-attempts", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Runs that may fail on an instance before it is recorded as failed.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(1, 3600), help="HTTP timeout, seconds.")
@click.option("--model", "model_name", default=None,
              help="Bundled model name or model directory (default: the bundled model).")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="ONNX Runtime threads (default: all cores).")
def dicomweb(url: str, auth_file: Path | None, state_path: Path, modalities: tuple[str, ...],
             date_from: dt.date | None, date_to: dt.date | None, since_last_run: bool,
             send_sc: bool, watch: bool, interval_s: float, max_attempts: int,
             timeout_s: float, model_name: str | None, threads: int | None) -> None:
    """Find chest CR/DX studies at URL (QIDO-RS), fetch them (WADO-RS), store the X-ray
    age SR back into each study (STOW-RS).

    URL is the DICOMweb base, e.g. http://pacs:8042/dicom-web. The state file records
    every instance answered or refused, so a second run stores nothing twice and an
    interrupted run (SIGTERM, Ctrl+C, a crash) resumes where it stopped. Logs name no
    patient. Exit status 1 when an instance failed in this run (it is retried next run,
    up to --max-attempts).
    """
    from ..predict import XRayAge
    from ..serve.dicomweb import DicomWebWorker, Query, make_client, read_credentials

    credentials = None
    if auth_file is not None:
        try:
            credentials = read_credentials(auth_file)
        except (PermissionError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--auth-file") from None
    if date_from and date_to and date_from > date_to:
        raise click.BadParameter("--from is after --to", param_hint="--from")
    xlogger = logging.getLogger("xrayage")
    if xlogger.getEffectiveLevel() > logging.INFO:
        xlogger.setLevel(logging.INFO)
    estimator = XRayAge.load(model_name, threads=threads)
    stop = threading.Event()
    worker = DicomWebWorker(make_client(url.rstrip("/"), credentials, timeout_s=timeout_s),
                            estimator, state_path, send_sc=send_sc,
                            max_attempts=max_attempts, stop=stop)
    query = Query(tuple(m.upper() for m in modalities), date_from, date_to, since_last_run)

    def on_signal(signum: int, _: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = 0
    try:
        if not watch:
            stats = worker.run_once(query)
            failed = stats.failed + stats.retry_later
            click.echo(f"xrayage: dicomweb: {stats.summary()}", err=True)
        else:
            for stats in worker.watch(query, interval_s):
                click.echo(f"xrayage: dicomweb: {stats.summary()}", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise click.exceptions.Exit(1)
