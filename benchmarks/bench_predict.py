"""Inference throughput on real radiographs (2 CPU cores): pipeline vs model-only vs xrv.

Measures, on the same N shared images, in one run:

1. ONNX forward alone (inputs preprocessed in memory beforehand), images/s;
2. the end-to-end pipeline (read, QC, preprocess, ONNX, CSV write), images/s, and its
   share of (1): reading overlaps inference, so it should reach >= 80%;
3. xrayage's reading + preprocessing against TorchXRayVision's
   (``xrv.utils.load_image`` + ``XRayCenterCrop`` + ``XRayResizer``), if installed.

Usage::

    python benchmarks/bench_predict.py [--model DIR] [--n 240] [--threads 2]
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/...
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from xrayage.io import read_radiograph
from xrayage.predict import PredictInput, XRayAge
from xrayage.preprocess import preprocess, to_square
from xrayage.results import ResultWriter

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def nih_images(n: int) -> list[Path]:
    with open(SHARED / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"]
    return [SHARED / r["path"] for r in rows[:n]]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:7.2f} images/s ({1000 * seconds / n:6.1f} ms/image)"


def tcmalloc_loaded() -> bool:
    return "tcmalloc" in Path("/proc/self/maps").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    files = nih_images(args.n)
    estimator = XRayAge.load(args.model, threads=args.threads, batch_size=args.batch_size)
    spec = estimator.card.preprocessing
    print(f"model {estimator.card.name} {estimator.card.version}, input {spec.image_size} px, "
          f"{len(files)} NIH images, {args.threads} threads, tcmalloc={tcmalloc_loaded()}")

    inputs = np.stack([preprocess(read_radiograph(f), spec) for f in files])
    estimator.model.run(inputs[: args.batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(inputs), args.batch_size):
        estimator.model.run(inputs[i : i + args.batch_size])
    model_s = time.perf_counter() - start
    print(f"ONNX forward only      : {rate(len(files), model_s)}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with ResultWriter(Path(tmp) / "out.csv") as writer:
            items = (PredictInput(str(f), str(f)) for f in files)
            for est in estimator.predict_many(items):
                writer.write(est.to_record())
        pipe_s = time.perf_counter() - start
    print(f"end-to-end pipeline    : {rate(len(files), pipe_s)}"
          f" = {100 * model_s / pipe_s:.0f}% of the model-only rate")

    start = time.perf_counter()
    for f in files:
        to_square(read_radiograph(f).pixels, spec)
    ours_s = time.perf_counter() - start
    print(f"xrayage read+preprocess: {rate(len(files), ours_s)}")
    try:
        import torchvision
        import torchxrayvision as xrv
    except ImportError:
        print("TorchXRayVision not installed: pip install torchxrayvision to compare")
        return
    transform = torchvision.transforms.Compose(
        [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(spec.image_size)])
    start = time.perf_counter()
    for f in files:
        transform(xrv.utils.load_image(str(f)))
    xrv_s = time.perf_counter() - start
    print(f"xrv load+crop+resize   : {rate(len(files), xrv_s)}"
          f"; xrayage is {xrv_s / ours_s:.2f}x as fast")


if __name__ == "__main__":
    main()
