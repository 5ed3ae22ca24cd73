"""Prepare-stage throughput: xrayage's read + preprocess against TorchXRayVision's.

Usage::

    python benchmarks/bench_prepare.py [--n 200] [--size 320] [--repeats 7] [--threads 2]
                                       [--data ../shared/data] [--workers 1] [--isolate]

Times, per image, on the first N NIH ChestX-ray14 PNGs of the shared manifest (8-bit,
512 x 512), from the file path to the model-ready float32 (1, S, S) array:

- ``xrayage``: :func:`xrayage.io.read_radiograph`, :func:`xrayage.preprocess.to_square`
  and :func:`xrayage.preprocess.normalize` with the bundled model's preprocessing at
  ``--size`` px (centre crop, antialiased bilinear resize, 8-bit rounding);
- ``xrv-cv2`` and ``xrv-skimage``: what TorchXRayVision's dataset classes (e.g.
  ``NIH_Dataset.__getitem__``) do for one image: ``skimage.io.imread``,
  ``xrv.datasets.normalize(img, 255, reshape=True)``, then ``apply_transforms`` of
  ``XRayCenterCrop()`` and ``XRayResizer(size, engine=...)``. Skipped, with a message,
  when ``torchxrayvision`` (and, for the cv2 engine, ``opencv-python``) is not installed:
  it is a benchmark-only package, never a dependency of xrayage.

Each repeat runs every engine once over all N files, in a rotated order (A B C, B C A,
...), after one warm-up pass each, so that drift in machine load hits all engines alike.
Library thread pools are capped at ``--threads`` (OpenMP/BLAS, OpenCV, torch); with
``--workers`` > 1 the images go through a thread pool of that size instead of one loop.

By default all engines share one process. The allocator's state is then shared too:
importing torch leaves glibc's malloc with high mmap/trim thresholds, so no engine pays
page faults. ``--isolate`` runs each engine in its own process that imports only its own
stack (a bare xrayage script has no torch), still interleaved. The page faults per image
(fresh memory the kernel had to map) are printed alongside the images/s medians and the
median of the per-repeat ratios. In a bare process glibc gives the ~3 MB that one 512 x 512
image needs back to the kernel after every image (~650 faults per image); Pillow's block
cache (``PILLOW_BLOCKS_MAX=4`` in the environment, inherited by every engine's process)
keeps most of it. A process that has created the ONNX session (``XRayAge.load()``, as
predict and evaluate do) paid none in our runs.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS")
ENGINES = ("xrayage", "xrv-cv2", "xrv-skimage")

Engine = Callable[[str], Any]


def nih_paths(data: Path, n: int) -> list[str]:
    """The first `n` nih_cxr14 rows of ``data/manifest.csv``, as absolute paths."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"]
    if not rows:
        sys.exit(f"{data / 'manifest.csv'} lists no nih_cxr14 images")
    return [str(data / r["path"]) for r in rows[:n]]


def build_engine(name: str, size: int, threads: int) -> tuple[Engine | None, str]:
    """The per-image function of engine `name` and a note, or ``None`` and why it is skipped."""
    for var in THREAD_VARS:  # before numpy, OpenCV or torch start their pools
        os.environ[var] = str(threads)
    if name == "xrayage":
        return _xrayage_engine(size)
    return _xrv_engine(name.removeprefix("xrv-"), size, threads)


def _xrayage_engine(size: int) -> tuple[Engine, str]:
    """Our prepare path at `size` px with the bundled model's other preprocessing settings."""
    from dataclasses import replace

    import numpy as np
    import PIL

    from xrayage.card import ModelCard
    from xrayage.io import read_radiograph
    from xrayage.preprocess import normalize, to_square

    card = ModelCard.load(REPO / "src" / "xrayage" / "models" / "xrayage-default")
    spec = replace(card.preprocessing, image_size=size)

    def run(path: str) -> Any:
        return normalize(to_square(read_radiograph(path).pixels, spec), spec)

    return run, (f"xrayage: square={spec.square} quantize={spec.quantize} channels="
                 f"{spec.channels}, numpy {np.__version__}, Pillow {PIL.__version__}")


def _xrv_engine(engine: str, size: int, threads: int) -> tuple[Engine | None, str]:
    """TorchXRayVision's per-image dataset steps with resize engine `engine`."""
    try:
        import skimage.io
        import torch
        import torchvision
        import torchxrayvision as xrv
    except ImportError as exc:
        return None, f"xrv-{engine} skipped ({exc}): pip install torchxrayvision to compare"
    torch.set_num_threads(threads)
    note = f"xrv-{engine}: torchxrayvision {xrv.__version__}, skimage {skimage.__version__}"
    if engine == "cv2":
        try:
            import cv2
        except ImportError:
            return None, "xrv-cv2 skipped: pip install opencv-python-headless to compare"
        cv2.setNumThreads(threads)
        note += f", opencv {cv2.__version__} ({cv2.getNumThreads()} threads)"
    transform = torchvision.transforms.Compose(
        [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size, engine=engine)])

    def run(path: str) -> Any:
        img = skimage.io.imread(path)
        sample = {"img": xrv.datasets.normalize(img, maxval=255, reshape=True)}
        return xrv.datasets.apply_transforms(sample, transform)["img"]

    return run, note


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def one_pass(engine: Engine, paths: list[str],
             pool: ThreadPoolExecutor | None) -> tuple[float, float]:
    """Images/s of `engine` over all `paths`, and its minor page faults per image."""
    faults = minor_faults()
    start = time.perf_counter()
    if pool is None:
        for path in paths:
            engine(path)
    else:
        for _ in pool.map(engine, paths):
            pass
    seconds = time.perf_counter() - start
    return len(paths) / seconds, (minor_faults() - faults) / len(paths)


class Runner:
    """One engine, in this process or (``isolate``) in a child process of its own."""

    def __init__(self, name: str, args: argparse.Namespace, paths: list[str],
                 isolate: bool) -> None:
        self.name = name
        self.conn: Connection | None = None
        if isolate:
            ctx = multiprocessing.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_child, args=(child, name, args, paths), daemon=True)
            self.proc.start()
            self.ok, self.note = self.conn.recv()
        else:
            self.engine, self.note = build_engine(name, args.size, args.threads)
            self.ok = self.engine is not None
            self.paths, self.workers = paths, args.workers

    def run(self) -> tuple[float, float]:
        if self.conn is not None:
            self.conn.send("run")
            result: tuple[float, float] = self.conn.recv()
            return result
        assert self.engine is not None
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            return one_pass(self.engine, self.paths, pool)
        finally:
            if pool is not None:
                pool.shutdown()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.send("stop")
            self.proc.join(30)


def _child(conn: Connection, name: str, args: argparse.Namespace, paths: list[str]) -> None:
    engine, note = build_engine(name, args.size, args.threads)
    conn.send((engine is not None, note))
    pool = ThreadPoolExecutor(args.workers) if args.workers > 1 else None
    while engine is not None and conn.recv() == "run":
        conn.send(one_pass(engine, paths, pool))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="the shared data folder holding manifest.csv")
    parser.add_argument("--n", type=int, default=200, help="NIH images per pass")
    parser.add_argument("--size", type=int, default=320, help="output side in pixels")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per engine")
    parser.add_argument("--threads", type=int, default=2, help="library threads per pool")
    parser.add_argument("--workers", type=int, default=1,
                        help="images in flight (a thread pool when > 1)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--isolate", action="store_true",
                        help="run each engine in a process of its own")
    args = parser.parse_args(argv)
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(names) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")

    paths = nih_paths(args.data.resolve(), args.n)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(paths)} NIH PNGs from {args.data}, {args.size} px, {args.repeats} interleaved "
          f"repeats, {args.threads} threads, {args.workers} worker(s), "
          f"{'one process per engine' if args.isolate else 'one process'}; "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {load:.2f}")
    runners = []
    for name in names:
        runner = Runner(name, args, paths, args.isolate)
        print("  " + runner.note)
        if runner.ok:
            runners.append(runner)
        else:
            runner.close()
    if not runners:
        sys.exit("no engine to time")

    for runner in runners:  # warm-up: imports, page cache, allocator
        runner.run()
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    faults: dict[str, list[float]] = {r.name: [] for r in runners}
    for rep in range(args.repeats):
        shift = rep % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            rate, fault = runner.run()
            rates[runner.name].append(rate)
            faults[runner.name].append(fault)
        print(f"  repeat {rep + 1}: " + "  ".join(f"{n} {v[-1]:6.1f}" for n, v in rates.items()),
              flush=True)
    for runner in runners:
        runner.close()

    print(f"\n{'engine':12s} {'median img/s':>12s} {'min':>7s} {'max':>7s} {'ms/img':>7s} "
          f"{'faults/img':>10s}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:12s} {med:12.1f} {min(values):7.1f} {max(values):7.1f} {1000 / med:7.2f} "
              f"{statistics.median(faults[name]):10.0f}")
    if "xrayage" in rates:
        for name, values in rates.items():
            if name != "xrayage":
                ratio = statistics.median(a / b for a, b in zip(rates["xrayage"], values,
                                                                   strict=True))
                print(f"xrayage / {name}: {ratio:.2f}x (median of per-repeat ratios)")


if __name__ == "__main__":
    main()
