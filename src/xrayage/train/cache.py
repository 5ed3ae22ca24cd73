"""Preprocessed image cache: decode every radiograph once, at training resolution.

Layout of ``ROOT/<key>/`` where ``key`` hashes the :class:`~xrayage.card.PreprocessSpec`,
the reader version and the cache format:

- ``spec.json``: the preprocessing spec;
- ``shard_00000.npy`` ...: uint8 arrays (n, S, S) holding ``round(to_square(x) * 255)``;
- ``index.jsonl``: one line per image file: ``{"id", "path", "status", "shard", "row"}``
  with status ``ok``, ``failed`` (unreadable, with ``error``) or ``rejected`` (quality
  check, with ``reasons``).

Images are keyed by file identity (absolute path, size, mtime), so a changed file is
decoded again. A build is resumable shard by shard; shards are read memory-mapped, so
epochs never decode PNG or DICOM again. numpy only (no torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..card import PreprocessSpec
from ..datasets.base import Sample
from ..pipeline import PredictInput, prepare
from ..quality import IMAGE_CHECKS

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
SHARD_SIZE = 2048


def spec_key(spec: PreprocessSpec) -> str:
    """Content address of a cache: a hash of the spec, the reader version and the format."""
    payload = json.dumps({"spec": dataclasses.asdict(spec), "reader": __version__,
                          "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_id(path: str | Path) -> str:
    """Identity of an image file: a hash of its absolute path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]


def decode_one(path: str, spec: PreprocessSpec, qc: bool = True) -> tuple[str, Any]:
    """Read and square one image through :func:`xrayage.pipeline.prepare`, as inference does.

    The quality checks are :data:`~xrayage.quality.IMAGE_CHECKS` (which ages to train on is
    the dataset filter's business, see ``--adults-only``), or none when `qc` is False.

    Returns
    -------
    (status, value)
        ``("ok", uint8 (S, S))``, ``("failed", message)`` or ``("rejected", reasons)``.
    """
    try:
        prepared = prepare(PredictInput(path, path), spec,
                           checks=IMAGE_CHECKS if qc else [])
    except Exception as exc:  # a bug on one odd file must not stop a 100k-image build
        return "failed", f"{type(exc).__name__}: {exc}"
    est = prepared.estimate
    if est.error is not None:
        return "failed", est.error
    if prepared.square is None:
        return "rejected", est.qc_reasons
    return "ok", np.round(prepared.square * 255.0).astype(np.uint8)


def _decode_star(args: tuple[str, PreprocessSpec, bool]) -> tuple[str, Any]:
    return decode_one(*args)


@dataclass
class ImageCache:
    """A built cache: look up an image's uint8 (S, S) array by its file id.

    Use :func:`build_cache` to create one. Shards are opened memory-mapped on first use,
    so an instance can be sent to DataLoader worker processes.
    """

    directory: Path
    spec: PreprocessSpec
    entries: dict[str, dict[str, Any]]

    def __post_init__(self) -> None:
        self._shards: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = {}
        return state

    @classmethod
    def open(cls, directory: str | Path) -> ImageCache:
        """Open an existing cache directory."""
        directory = Path(directory)
        spec = PreprocessSpec(**json.loads((directory / "spec.json").read_text()))
        return cls(directory, spec, _read_index(directory / "index.jsonl"))

    def status(self, sample: Sample) -> dict[str, Any] | None:
        """The index entry of a sample's file, or None if it was never decoded."""
        return self.entries.get(file_id(sample.path))

    def locate(self, samples: Sequence[Sample]) -> tuple[list[Sample], np.ndarray]:
        """Keep the samples cached as ``ok``; return them with their (shard, row) pairs."""
        kept, where = [], []
        for s in samples:
            entry = self.entries.get(file_id(s.path))
            if entry is not None and entry["status"] == "ok":
                kept.append(s)
                where.append((entry["shard"], entry["row"]))
        return kept, np.asarray(where, dtype=np.int64).reshape(-1, 2)

    def image(self, shard: int, row: int) -> np.ndarray:
        """The cached uint8 (S, S) image at (shard, row)."""
        arr = self._shards.get(shard)
        if arr is None:
            arr = np.load(self.directory / f"shard_{shard:05d}.npy", mmap_mode="r")
            self._shards[shard] = arr
        return np.asarray(arr[row])

    def problems(self) -> list[dict[str, Any]]:
        """Index entries of failed or rejected images."""
        return [e for e in self.entries.values() if e["status"] != "ok"]


def _read_index(path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry["id"]] = entry
    return entries


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build_cache(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    root: str | Path,
    workers: int | None = None,
    qc: bool = True,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
) -> ImageCache:
    """Decode the samples not yet cached and return the cache.

    Parameters
    ----------
    samples : sequence of Sample
    spec : PreprocessSpec
        Resolution and squaring; the cache stores uint8 ``round(x * 255)`` in [0, 255].
    root : path
        Cache root; the cache lives in ``root/<spec_key(spec)>``.
    workers : int, optional
        Decoding processes (default: CPU count; 0 or 1 decodes in this process).
    qc : bool
        Record images the quality check rejects (non-chest, lateral, blank ...) as
        ``rejected`` rather than caching them.
    shard_size : int
        Images per shard: the unit of resumption.
    progress : bool
        Show a rich progress bar.

    Returns
    -------
    ImageCache
    """
    directory = Path(root) / spec_key(spec)
    directory.mkdir(parents=True, exist_ok=True)
    spec_file = directory / "spec.json"
    if not spec_file.is_file():
        spec_file.write_text(json.dumps(dataclasses.asdict(spec), indent=1) + "\n")
    index_path = directory / "index.jsonl"
    entries = _read_index(index_path)
    todo: dict[str, str] = {}
    for s in samples:
        key = file_id(s.path)
        if key not in entries:
            todo.setdefault(key, str(Path(s.path).resolve()))
    next_shard = 1 + max((e["shard"] for e in entries.values() if "shard" in e), default=-1)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if todo:
        logger.info("cache %s: decoding %d images with %d workers", directory, len(todo), workers)
        _decode_all(list(todo.items()), spec, qc, workers, shard_size, next_shard, directory,
                    index_path, entries, progress)
    return ImageCache(directory, spec, entries)


def _decode_all(
    todo: list[tuple[str, str]], spec: PreprocessSpec, qc: bool, workers: int, shard_size: int,
    shard: int, directory: Path, index_path: Path, entries: dict[str, dict[str, Any]],
    progress: bool,
) -> None:
    from rich.progress import Progress

    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("caching images", total=len(todo))
            for chunk in _chunks(todo, shard_size):
                jobs = [(path, spec, qc) for _, path in chunk]
                results = (pool.map(_decode_star, jobs, chunksize=8) if pool
                           else map(_decode_star, jobs))
                images: list[np.ndarray] = []
                lines: list[dict[str, Any]] = []
                for (key, path), (status, value) in zip(chunk, results, strict=True):
                    entry: dict[str, Any] = {"id": key, "path": path, "status": status}
                    if status == "ok":
                        entry.update(shard=shard, row=len(images))
                        images.append(value)
                    elif status == "failed":
                        entry["error"] = value
                    else:
                        entry["reasons"] = value
                    lines.append(entry)
                    bar.advance(task)
                if images:
                    tmp = directory / f"shard_{shard:05d}.tmp.npy"
                    np.save(tmp, np.stack(images))
                    os.replace(tmp, directory / f"shard_{shard:05d}.npy")
                # The index is appended after its shard exists, so a crash loses one chunk.
                with open(index_path, "a") as handle:
                    handle.writelines(json.dumps(e) + "\n" for e in lines)
                entries.update((e["id"], e) for e in lines)
                if images:
                    shard += 1
    finally:
        if pool:
            pool.shutdown()
