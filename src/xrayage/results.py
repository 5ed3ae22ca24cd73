"""Write result rows to CSV or JSON Lines, resumably.

Each row is flushed as it is written, so an interrupted run loses nothing already
written. Re-opening the same file skips the inputs it already holds; a partial last
line (a run killed mid-write) is dropped first.

Every input row gives one output row, repeats included: rows are keyed by their
position among the rows of the same path (the first, second, ... occurrence), so a
manifest listing a path twice gets two rows, and a resumed run skips exactly the
occurrences already written (:func:`skip_done`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .estimate import RECORD_FIELDS

T = TypeVar("T")


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
        self.done_counts: Counter[str] = self._load_done()
        """Rows already written, per path (a path listed twice counts twice)."""
        self.done: set[str] = set(self.done_counts)
        self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        if not self.jsonl and self._handle.tell() == 0:
            self._write_line(",".join(fields))

    def _load_done(self) -> Counter[str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return Counter()
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a run was killed mid-row: drop the partial row
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        text = data.decode("utf-8")
        if self.jsonl:
            return Counter(str(json.loads(line)["path"]) for line in text.splitlines()
                           if line.strip())
        rows = csv.DictReader(io.StringIO(text))
        if rows.fieldnames is not None and list(rows.fieldnames) != list(self.fields):
            raise ValueError(f"{self.path}: existing columns differ; use a new output file")
        return Counter(row["path"] for row in rows)

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
        self.done_counts[str(record["path"])] += 1

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


def skip_done(items: Iterable[T], done: Counter[str],
              name: Callable[[T], str] = lambda item: str(getattr(item, "name", item)),
              ) -> Iterator[T]:
    """The inputs not yet written: for each name, skip its first ``done[name]`` rows.

    ``done`` is read as it is when the generator starts (a snapshot), so rows written
    during the run never hide a later repeat.

    Examples
    --------
    >>> from xrayage.pipeline import PredictInput
    >>> rows = [PredictInput("a", "a"), PredictInput("b", "b"), PredictInput("a", "a")]
    >>> [i.name for i in skip_done(rows, Counter({"a": 1}))]
    ['b', 'a']
    """
    already = Counter(done)
    seen: Counter[str] = Counter()
    for item in items:
        key = name(item)
        seen[key] += 1
        if seen[key] > already[key]:
            yield item


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    return str(value)
