"""Peak memory of one huge image through the whole pipeline (issue 19's reproducers).

Each case runs ``XRayAge.predict`` on one file in a fresh subprocess and reports the
child's peak resident memory (``ru_maxrss``), the time and the outcome (an X-ray age or
the failure's kind):

- ``png16-8900``: a 151 kB-class 16-bit PNG of 8900 x 8900 (a smooth gradient);
- ``rle-8944``: an RLE Lossless DICOM of 8944 x 8944, 16-bit;
- ``jpeg-8900``: an 8-bit gray baseline JPEG of 8900 x 8900 (fits: decoded whole);
- ``jpeg-rgb-5000``: an RGB JPEG of 5000 x 5000 (over the budget: decoded at 1/2 scale);
- ``dicom16-at-budget``: the largest uncompressed 16-bit DICOM square the default memory
  budget accepts (the DICOM path is the costliest per pixel).

Run ``python benchmarks/bench_decode_memory.py [--model NAME_OR_DIR] [--budget-mb N]``
(about a minute on 2 cores); the acceptance bar is a peak under 1 GB for every case.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_png16(path: Path, side: int) -> None:
    from PIL import Image

    ramp = np.linspace(0, 4095, side, dtype=np.float32)[:, None].repeat(side, 1)
    Image.fromarray(ramp.astype(np.uint16)).save(path, optimize=True)


def make_jpeg(path: Path, side: int) -> None:
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32)[:, None].repeat(side, 1)
    Image.fromarray(ramp.astype(np.uint8)).save(path, quality=90)


def make_jpeg_rgb(path: Path, side: int) -> None:
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32)[:, None].repeat(side, 1)
    gray = Image.fromarray(ramp.astype(np.uint8))
    Image.merge("RGB", (gray, gray, gray)).save(path, quality=90)


def make_raw(path: Path, side: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dicom_factory import make_dataset

    ramp = np.linspace(0, 4095, side, dtype=np.float32)[:, None].repeat(side, 1)
    make_dataset(ramp.astype(np.uint16), WindowCenter="2048", WindowWidth="4096").save_as(
        path, enforce_file_format=True)


def make_rle(path: Path, side: int) -> None:
    from pydicom.uid import RLELossless

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dicom_factory import make_dataset

    ramp = np.linspace(0, 4095, side, dtype=np.float32)[:, None].repeat(side, 1)
    ds = make_dataset(ramp.astype(np.uint16))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)


def child(model: str | None, path: str) -> None:
    from xrayage.predict import XRayAge

    estimator = XRayAge.load(model, threads=2)
    start = time.perf_counter()
    est = estimator.predict(path)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec (the parent's peak)
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        peak_mb = int(line.split()[1]) / 1024
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": round(peak_mb), "seconds": round(seconds, 2),
                      "xray_age": est.xray_age,
                      "failure": est.failure.kind.value if est.failure else None,
                      "message": est.failure.message if est.failure else None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.child)
        return
    from xrayage.memory import max_decode_side

    at_budget = max_decode_side("dicom", bytes_per_sample=2)
    cases = {"png16-8900": (make_png16, 8900, ".png"), "rle-8944": (make_rle, 8944, ".dcm"),
             "jpeg-8900": (make_jpeg, 8900, ".jpg"),
             "jpeg-rgb-5000": (make_jpeg_rgb, 5000, ".jpg"),
             "dicom16-at-budget": (make_raw, at_budget, ".dcm")}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'case':18} {'file':>10} {'peak RSS':>10} {'time':>7}  outcome")
        sys.stdout.flush()
        for name, (make, side, suffix) in cases.items():
            if args.cases and name not in args.cases:
                continue
            path = Path(tmp) / f"{name}{suffix}"
            make(path, side)
            cmd = [sys.executable, __file__, "--child", str(path)]
            if args.model:
                cmd += ["--model", args.model]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            outcome = (f"X-ray age {result['xray_age']:.1f}" if result["xray_age"] is not None
                       else f"{result['failure']}: {result['message']}")
            print(f"{name:18} {path.stat().st_size / 1e3:>8.0f}kB "
                  f"{result['peak_mb']:>6} MiB {result['seconds']:>6.1f}s  "
                  f"{side}x{side}: {outcome}", flush=True)


if __name__ == "__main__":
    main()
