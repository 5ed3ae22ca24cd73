"""Prepare-stage throughput: xrayage's read + preprocess against TorchXRayVision's.

Usage::

    python benchmarks/bench_prepare.py [--n 200] [--size 320] [--repeats 7] [--threads 2]
                                       [--data ../shared/data] [--workers 1]

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
Prints the median images/s per engine, the median of the per-repeat ratios, and the minor
page faults per image (fresh memory the allocator had to map: a cost that depends on what
else the process holds, so all engines run in one process).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS")

Engine = Callable[[str], Any]


def nih_paths(data: Path, n: int) -> list[str]:
    """The first `n` nih_cxr14 rows of ``data/manifest.csv``, as absolute paths."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"]
    if not rows:
        sys.exit(f"{data / 'manifest.csv'} lists no nih_cxr14 images")
    return [str(data / r["path"]) for r in rows[:n]]


def xrayage_engine(size: int) -> tuple[Engine, str]:
    """Our prepare path at `size` px with the bundled model's other preprocessing settings."""
    from dataclasses import replace

    from xrayage.card import ModelCard
    from xrayage.io import read_radiograph
    from xrayage.preprocess import normalize, to_square

    card = ModelCard.load(Path(__file__).resolve().parents[1] / "src" / "xrayage" / "models"
                          / "xrayage-default")
    spec = replace(card.preprocessing, image_size=size)

    def run(path: str) -> Any:
        return normalize(to_square(read_radiograph(path).pixels, spec), spec)

    return run, (f"square={spec.square} quantize={spec.quantize} channels={spec.channels}")


def xrv_engines(size: int, threads: int) -> tuple[dict[str, Engine], list[str]]:
    """TorchXRayVision's per-image dataset steps with each resize engine that imports."""
    notes: list[str] = []
    try:
        import skimage.io
        import torch
        import torchvision
        import torchxrayvision as xrv
    except ImportError as exc:
        return {}, [f"TorchXRayVision skipped ({exc}): pip install torchxrayvision to compare"]
    torch.set_num_threads(threads)
    notes.append(f"torchxrayvision {xrv.__version__}")
    engines: list[str] = []
    try:
        import cv2
    except ImportError:
        notes.append("xrv-cv2 skipped: pip install opencv-python-headless to compare")
    else:
        cv2.setNumThreads(threads)
        notes.append(f"opencv {cv2.__version__} ({cv2.getNumThreads()} threads)")
        engines.append("cv2")
    engines.append("skimage")

    def make(engine: str) -> Engine:
        transform = torchvision.transforms.Compose(
            [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size, engine=engine)])

        def run(path: str) -> Any:
            img = skimage.io.imread(path)
            sample = {"img": xrv.datasets.normalize(img, maxval=255, reshape=True)}
            return xrv.datasets.apply_transforms(sample, transform)["img"]

        return run

    return {f"xrv-{e}": make(e) for e in engines}, notes


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
    parser.add_argument("--engines", default="xrayage,xrv-cv2,xrv-skimage",
                        help="comma-separated subset of xrayage, xrv-cv2, xrv-skimage")
    args = parser.parse_args(argv)
    for var in THREAD_VARS:  # before numpy, OpenCV or torch start their pools
        os.environ[var] = str(args.threads)

    import numpy as np
    import PIL

    paths = nih_paths(args.data.resolve(), args.n)
    ours, settings = xrayage_engine(args.size)
    engines: dict[str, Engine] = {"xrayage": ours}
    xrv, notes = xrv_engines(args.size, args.threads)
    engines.update(xrv)
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    engines = {name: engines[name] for name in wanted if name in engines}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(paths)} NIH PNGs from {args.data}, {args.size} px ({settings}), "
          f"{args.repeats} interleaved repeats, {args.threads} threads, "
          f"{args.workers} worker(s)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, Pillow "
          f"{PIL.__version__}, {os.cpu_count()} CPUs, load {load:.2f}; " + "; ".join(notes))

    pool = ThreadPoolExecutor(args.workers) if args.workers > 1 else None
    names = list(engines)
    for name in names:  # warm-up: imports, page cache, allocator
        one_pass(engines[name], paths, pool)
    rates: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            rate, fault = one_pass(engines[name], paths, pool)
            rates[name].append(rate)
            faults[name].append(fault)
        print(f"  repeat {rep + 1}: " + "  ".join(f"{n} {rates[n][-1]:6.1f}" for n in names),
              flush=True)
    if pool is not None:
        pool.shutdown()

    print(f"\n{'engine':12s} {'median img/s':>12s} {'min':>7s} {'max':>7s} {'ms/img':>7s} "
          f"{'faults/img':>10s}")
    for name in names:
        med = statistics.median(rates[name])
        print(f"{name:12s} {med:12.1f} {min(rates[name]):7.1f} {max(rates[name]):7.1f} "
              f"{1000 / med:7.2f} {statistics.median(faults[name]):10.0f}")
    if "xrayage" in rates:
        for name in names[1:]:
            ratio = statistics.median(a / b for a, b in zip(rates["xrayage"], rates[name],
                                                               strict=True))
            print(f"xrayage / {name}: {ratio:.2f}x (median of per-repeat ratios)")


if __name__ == "__main__":
    main()
