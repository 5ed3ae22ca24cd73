"""``xrayage predict --engine ray``: X-ray age for an archive on a Ray cluster (Ray Data).

Pipeline (streaming; nothing is materialised in the driver):

1. the driver lists the inputs lazily (:func:`~xrayage.inputs.expand_inputs`, skipping the
   paths already in ``-o``) into Parquet shards under ``OUT.parts/inputs``;
2. ``read_parquet`` -> blocks of ``read_rows`` inputs -> :func:`prepare_batch` in parallel
   tasks: read, quality check and preprocess with :func:`~xrayage.pipeline.prepare`,
   the local engine's own stage;
3. :class:`ShardInference` actors (one ONNX Runtime session each, a GPU each when
   ``onnxruntime-gpu`` sees one and the cluster has GPUs) run the model with the local
   engine's batching and write each batch's rows to an atomic Parquet shard;
4. the driver merges shards into ``-o`` as they finish, in input order, each path once.

A lost worker is retried by Ray (tasks ``max_retries``, actors ``max_restarts`` and
``max_task_retries``); a retried batch rewrites the same shard name, and the merge skips
paths already written, so every input gets exactly one row. A killed driver leaves its
finished shards behind; the next run merges them first, then does what is left.

On a multi-node cluster, the inputs, the model directory and ``OUT.parts`` must be on
storage every node sees at the same path (a shared file system).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..extras import require
from ..inputs import expand_inputs
from ..model import DEFAULT_MODEL, resolve_model_dir
from ..pipeline import PredictInput, Prepared, estimate_batches, prepare
from ..predict import XRayAge
from ..results import ResultWriter
from .shards import leftover_shards, merge_shards, write_input_shards, write_result_shard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Settings of a Ray run.

    Parameters
    ----------
    address : str, optional
        ``auto`` (a running cluster), ``ray://host:10001`` (Ray Client), or None to use an
        already initialised Ray or start a local one.
    num_workers : int, optional
        Inference actors (default: one per GPU when GPU actors are used, else half the
        cluster's CPUs, at least 1).
    actor_cpus : float
        CPUs reserved per actor; also its ONNX Runtime threads.
    read_rows : int
        Inputs per read/preprocess task.
    rows_per_shard : int
        Inputs per listing shard (the driver's memory bound while listing).
    max_retries : int
        Retries of a failed read task, restarts of a dead actor and retries of its batch.
    gpu : bool, optional
        Force GPU actors on or off (default: when onnxruntime has CUDA and the cluster GPUs).
    allow : tuple of str
        Refusal codes relaxed to warnings, as ``xrayage predict --allow``.
    """

    address: str | None = None
    num_workers: int | None = None
    actor_cpus: float = 1.0
    read_rows: int = 32
    rows_per_shard: int = 10_000
    max_retries: int = 3
    gpu: bool | None = None
    allow: tuple[str, ...] = ()


def prepare_batch(batch: Any, card: ModelCard, tta: bool, allow: tuple[str, ...] = ()) -> Any:
    """Read and preprocess a batch of inputs (a Ray Data task).

    Parameters
    ----------
    batch : pyarrow.Table
        Columns ``path`` (the row label), ``source`` (absolute path), ``age_years``, ``sex``,
        ``view``.
    card : ModelCard
        Drives the preprocessing (:func:`~xrayage.pipeline.prepare`, as in the local engine).
    tta : bool
    allow : tuple of str
        Refusal codes relaxed to warnings.

    Returns
    -------
    pyarrow.Table
        ``path``; ``estimate`` (JSON of :meth:`~xrayage.pipeline.Prepared.metadata`: age, QC,
        failure); ``tensor`` (float32 bytes of the (T, C, S, S) model input, empty when
        rejected or unreadable).
    """
    import pyarrow as pa

    paths, estimates, tensors = [], [], []
    for row in batch.to_pylist():
        item = PredictInput(row["source"], row["path"], row["age_years"], row["sex"],
                            row.get("view"))
        prepared = prepare(item, card.preprocessing, tta=tta, allow=allow)
        paths.append(prepared.estimate.path)
        estimates.append(json.dumps(prepared.metadata()))
        tensor = prepared.tensor
        tensors.append(b"" if tensor is None else np.ascontiguousarray(tensor, "<f4").tobytes())
    return pa.table({"path": pa.array(paths, pa.string()),
                     "estimate": pa.array(estimates, pa.string()),
                     "tensor": pa.array(tensors, pa.binary())})


class ShardInference:
    """Ray Data actor: one ONNX Runtime session; writes each batch's rows as a shard.

    Parameters
    ----------
    model : str
        Bundled model name or model directory (the same path on every node).
    shard_dir : str
        Where result shards go (shared storage on a multi-node cluster).
    tta : bool
    batch_size : int
        Images per ONNX call, as in the local engine.
    threads : int
        ONNX Runtime intra-op threads.
    allow : tuple of str
        Refusal codes relaxed to warnings.
    """

    def __init__(self, model: str, shard_dir: str, tta: bool = False, batch_size: int = 8,
                 threads: int = 1, allow: tuple[str, ...] = ()) -> None:
        self.estimator = XRayAge.load(model, threads=threads, tta=tta, batch_size=batch_size,
                                      allow=allow)
        self.shard_dir = shard_dir
        spec = self.estimator.card.preprocessing
        self.shape = (spec.channels, spec.image_size, spec.image_size)

    def __call__(self, batch: Any) -> Any:
        """Run one batch (the output of :func:`prepare_batch`) and write its shard."""
        import pyarrow as pa

        prepared = [Prepared.from_metadata(
            json.loads(row["estimate"]),
            np.frombuffer(row["tensor"], "<f4").reshape(-1, *self.shape).copy()
            if row["tensor"] else None) for row in batch.to_pylist()]
        estimates = list(estimate_batches(self.estimator.model, prepared,
                                          batch_size=self.estimator.batch_size,
                                          allow=self.estimator.allow))
        shard = write_result_shard([e.to_record() for e in estimates], self.shard_dir)
        return pa.table({"shard": [shard.name], "rows": [len(estimates)]})


def predict_ray(inputs: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                model: str | None = None, tta: bool = False, batch_size: int = 8,
                options: RayOptions | None = None,
                actor_class: type[ShardInference] = ShardInference) -> dict[str, int]:
    """Predict every input on a Ray cluster and write the rows to ``output``.

    Parameters
    ----------
    inputs : iterable of path
        Files, folders and CSV manifests, as for ``xrayage predict``.
    output : path
        ``.csv`` or ``.jsonl``; resumable, rows as in the local engine.
    model : str, optional
        Bundled model name or directory (default: the bundled model).
    tta : bool
    batch_size : int
        Images per ONNX call.
    options : RayOptions, optional
    actor_class : type
        The inference actor (a subclass can inject faults in tests).

    Returns
    -------
    dict
        Row counts by ``qc_status`` written in this run, ``"duplicate"`` rows dropped, and
        ``"already"``: rows already in ``output`` before it.

    Raises
    ------
    MissingExtraError
        Without the ``cluster`` extra.
    """
    ray = _import_ray()
    opts = options or RayOptions()
    output = Path(output).absolute()
    parts = output.with_name(output.name + ".parts")
    writer = ResultWriter(output)
    counts: dict[str, int] = {"already": len(writer.done)}
    try:
        _add(counts, merge_shards(leftover_shards(parts / "rows"), writer))
        shutil.rmtree(parts / "inputs", ignore_errors=True)
        items = (PredictInput(os.path.abspath(i.name), i.name, i.age_years, i.sex, i.view)
                 for i in expand_inputs(inputs))
        shards, todo = write_input_shards(items, parts / "inputs", writer.done,
                                          opts.rows_per_shard)
        if todo:
            started = _connect(ray, opts.address)
            from ray.data import DataContext

            execution = DataContext.get_current().execution_options
            keep_order = execution.preserve_order
            try:
                ds = _pipeline(ray, shards, str(parts / "rows"), model, tta, batch_size, opts,
                               actor_class)
                for row in ds.iter_rows():
                    _add(counts, merge_shards([parts / "rows" / row["shard"]], writer))
            finally:
                execution.preserve_order = keep_order
                if started:
                    ray.shutdown()
        shutil.rmtree(parts, ignore_errors=True)
    finally:
        writer.close()
    return counts


def _pipeline(ray: Any, shards: list[Path], shard_dir: str, model: str | None, tta: bool,
              batch_size: int, opts: RayOptions, actor_class: type[ShardInference]) -> Any:
    from ray.data import ActorPoolStrategy, DataContext

    model_ref = _model_ref(model)
    card = ModelCard.load(resolve_model_dir(model_ref))
    gpu = _use_gpu(ray) if opts.gpu is None else opts.gpu
    workers = opts.num_workers or _default_workers(ray, gpu, opts.actor_cpus)
    # merged rows come out in input order (predict_ray restores the setting)
    DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.read_parquet([str(s) for s in shards])
    ds = ds.repartition(target_num_rows_per_block=opts.read_rows)
    retries = {"max_retries": opts.max_retries}
    restarts = {"max_restarts": opts.max_retries, "max_task_retries": opts.max_retries}
    with warnings.catch_warnings():
        # Ray 2.5x deprecates **ray_remote_args but has no named retry parameters yet;
        # without them actors restart forever on a poison input that kills the process.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        ds = ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"card": card, "tta": tta, "allow": opts.allow},
                            num_cpus=1, **retries)
        return ds.map_batches(
            actor_class, batch_format="pyarrow", batch_size=max(batch_size, opts.read_rows),
            fn_constructor_kwargs={"model": model_ref, "shard_dir": shard_dir, "tta": tta,
                                   "allow": opts.allow,
                                   "batch_size": batch_size,
                                   "threads": max(1, int(opts.actor_cpus))},
            compute=ActorPoolStrategy(size=workers), num_cpus=opts.actor_cpus,
            num_gpus=1 if gpu else 0, **restarts)


def _model_ref(model: str | None) -> str:
    """A bundled model's name as is (each node resolves it); a directory made absolute."""
    if model is not None and Path(model).is_dir():
        return str(Path(model).resolve())
    return model if model is not None else DEFAULT_MODEL


def _use_gpu(ray: Any) -> bool:
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return cuda and ray.cluster_resources().get("GPU", 0) > 0


def _default_workers(ray: Any, gpu: bool, actor_cpus: float) -> int:
    resources = ray.cluster_resources()
    if gpu:
        return max(1, int(resources.get("GPU", 1)))
    # leave about half the CPUs to the read/preprocess tasks
    return max(1, int(resources.get("CPU", 2) // (2 * max(actor_cpus, 1.0))))


QUIET_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
"""Ray's Python loggers, held at WARNING (ERROR for ``ray`` itself) unless ``-v`` is given."""


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) Ray; True if this call started it (and must shut it down).

    Unless the command line asked for INFO logs (``-v``), a successful run prints nothing
    of Ray's: its Python loggers are held at WARNING (the ``ray`` logger at ERROR: its one
    warning on a start is the token-authentication notice), Ray Data's progress log is
    off, and the driver's C++ log (which logs, at error level, that actors restart with
    constructor arguments in the object store: every Ray Data actor pool does) stops at
    fatal. The cluster's own log files keep everything.
    """
    if ray.is_initialized():
        return False
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    backend = os.environ.get("RAY_BACKEND_LOG_LEVEL")
    if quiet and backend is None:
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    try:
        with _held_stderr(quiet):
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR if quiet else logging.INFO)
    finally:
        if quiet and backend is None:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
    if quiet:
        for name in QUIET_RAY_LOGGERS:  # Ray Data's progress log is INFO: held back too
            logging.getLogger(name).setLevel(logging.ERROR if name == "ray" else logging.WARNING)
    return True


@contextlib.contextmanager
def _held_stderr(hold: bool) -> Iterator[None]:
    """Hold back what C++ code writes to file descriptor 2 (Ray's start-up log line), and
    write it out after all if the block fails."""
    if not hold:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0) + value


def _import_ray() -> Any:
    require("ray.data", "cluster", "xrayage predict --engine ray")
    return require("ray", "cluster", "xrayage predict --engine ray")


__all__ = ["RayOptions", "ShardInference", "predict_ray", "prepare_batch"]
