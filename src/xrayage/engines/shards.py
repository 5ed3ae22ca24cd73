"""Parquet shards of inputs and of result rows, written atomically and merged exactly once.

The Ray engine never holds the whole input list in its driver: :func:`write_input_shards`
streams :func:`~xrayage.inputs.expand_inputs` into Parquet files of ``rows_per_shard``
inputs. Workers write each batch's result rows with :func:`write_result_shard`: a temporary
file renamed into place under a name derived from the batch's paths, so a retried batch
rewrites the same shard and a half-written shard is never visible. :func:`merge_shards`
appends the rows to the ``-o`` file through :class:`~xrayage.results.ResultWriter`, skipping
paths already written, then deletes each merged shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..extras import require
from ..pipeline import PredictInput
from ..results import ResultWriter

logger = logging.getLogger(__name__)


def _pa() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet (the ``cluster`` extra)."""
    return (require("pyarrow", "cluster", "the Ray engine"),
            require("pyarrow.parquet", "cluster", "the Ray engine"))


def input_schema() -> Any:
    """Arrow schema of an input shard: ``path`` (row label), ``source``, ``age_years``, ``sex``,
    ``view``."""
    pa, _ = _pa()
    return pa.schema([("path", pa.string()), ("source", pa.string()),
                      ("age_years", pa.float64()), ("sex", pa.string()),
                      ("view", pa.string())])


def result_schema() -> Any:
    """Arrow schema of a result shard: the columns of :data:`~xrayage.estimate.RECORD_FIELDS`."""
    pa, _ = _pa()
    f64, text = pa.float64(), pa.string()
    return pa.schema([
        ("path", text), ("xray_age", f64), ("age_interval_lower", f64), ("age_interval_upper", f64),
        ("age_years", f64), ("age_gap", f64), ("age_gap_corrected", f64),
        ("qc_status", text), ("qc_reasons", pa.list_(text)), ("error", text),
    ])


def _atomic_write(table: Any, path: Path) -> None:
    _, pq = _pa()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # atomic on POSIX, also on NFS/Lustre within one directory


def write_input_shards(items: Iterable[PredictInput], directory: str | Path,
                       skip: set[str] | frozenset[str] = frozenset(),
                       rows_per_shard: int = 10_000) -> tuple[list[Path], int]:
    """Stream inputs into Parquet shards, holding at most ``rows_per_shard`` in memory.

    Parameters
    ----------
    items : iterable of PredictInput
        Usually the lazy :func:`~xrayage.inputs.expand_inputs`; sources must be paths
        (workers read ``source``; ``name`` labels the row).
    directory : path
        Created if needed; shards are ``inputs_00000.parquet`` ...
    skip : set of str
        Input names already done (a resumed run).
    rows_per_shard : int

    Returns
    -------
    (list of Path, int)
        The shards written and the number of inputs in them.
    """
    pa, _ = _pa()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    total = 0
    for chunk in _chunked((i for i in items if i.name not in skip), rows_per_shard):
        table = pa.Table.from_pylist(
            [{"path": i.name, "source": str(i.source), "age_years": i.age_years,
              "sex": i.sex, "view": i.view} for i in chunk],
            schema=input_schema())
        path = directory / f"inputs_{len(shards):05d}.parquet"
        _atomic_write(table, path)
        shards.append(path)
        total += len(chunk)
    return shards, total


def shard_name(paths: Sequence[str]) -> str:
    """Deterministic shard file name for a batch: a hash of its paths, in order."""
    digest = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:32]
    return f"rows_{digest}.parquet"


def write_result_shard(records: Sequence[dict[str, Any]], directory: str | Path) -> Path:
    """Write result rows atomically; a retry of the same batch rewrites the same file."""
    pa, _ = _pa()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / shard_name([str(r["path"]) for r in records])
    _atomic_write(pa.Table.from_pylist(list(records), schema=result_schema()), path)
    return path


def read_result_shard(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a result shard, as :meth:`~xrayage.estimate.AgeEstimate.to_record` gave them."""
    _, pq = _pa()
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def merge_shards(shards: Iterable[str | Path], writer: ResultWriter,
                 delete: bool = True) -> dict[str, int]:
    """Append the rows of result shards to ``writer``, each path at most once.

    Rows whose path the writer already holds (an earlier run, another shard, a retried
    batch) are skipped. A shard is deleted only after its rows are flushed to disk, so a
    driver killed mid-merge loses nothing and duplicates nothing on the next run.

    Returns
    -------
    dict
        Counts by ``qc_status`` of the rows written, plus ``"duplicate"``.
    """
    counts: dict[str, int] = {}
    for shard in shards:
        for record in read_result_shard(shard):
            if record["path"] in writer.done:
                counts["duplicate"] = counts.get("duplicate", 0) + 1
                continue
            writer.write(record)
            counts[record["qc_status"]] = counts.get(record["qc_status"], 0) + 1
        if delete:
            Path(shard).unlink(missing_ok=True)
    return counts


def leftover_shards(directory: str | Path) -> list[Path]:
    """Complete result shards left by a run killed before it merged them."""
    directory = Path(directory)
    return sorted(directory.glob("rows_*.parquet")) if directory.is_dir() else []


def _chunked(items: Iterable[PredictInput], size: int) -> Iterator[list[PredictInput]]:
    chunk: list[PredictInput] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
