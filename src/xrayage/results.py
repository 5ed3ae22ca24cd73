"""Write result rows to CSV or JSON Lines, resumably.

Each row is flushed as it is written, so an interrupted run loses nothing already
written. Re-opening the same file skips the inputs it already holds; a partial last
line (a run killed mid-write) is dropped first.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import TracebackType
from typing import Any

from .estimate import RECORD_FIELDS


class ResultWriter:
    """Append result rows to ``.csv`` or ``.jsonl``, remembering which paths are done.

    Parameters
    ----------
    path : path
        Output file; its suffix picks the format.
    fields : sequence of str
        CSV columns (JSON rows keep any keys).
    """

    def __init__(self, path: str | Path, fields: tuple[str, ...] = RECORD_FIELDS) -> None:
        self.path = Path(path)
        self.fields = fields
        self.jsonl = self.path.suffix.lower() in (".jsonl", ".ndjson", ".json")
        if not self.jsonl and self.path.suffix.lower() != ".csv":
            raise ValueError(f"{self.path}: output must end in .csv or .jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = self._load_done()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        if not self.jsonl and self._handle.tell() == 0:
            self._write_line(",".join(fields))

    def _load_done(self) -> set[str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return set()
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a run was killed mid-row: drop the partial row
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        text = data.decode("utf-8")
        if self.jsonl:
            return {json.loads(line)["path"] for line in text.splitlines() if line.strip()}
        rows = csv.DictReader(io.StringIO(text))
        if rows.fieldnames is not None and list(rows.fieldnames) != list(self.fields):
            raise ValueError(f"{self.path}: existing columns differ; use a new output file")
        return {row["path"] for row in rows}

    def write(self, record: dict[str, Any]) -> None:
        """Append one row and flush it to disk."""
        if self.jsonl:
            self._write_line(json.dumps(record, default=str))
        else:
            buf = io.StringIO()
            row = {k: _cell(record.get(k)) for k in self.fields}
            csv.DictWriter(buf, self.fields, lineterminator="").writerow(row)
            self._write_line(buf.getvalue())
        self.done.add(str(record["path"]))

    def _write_line(self, line: str) -> None:
        self._handle.write(line + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    return str(value)
