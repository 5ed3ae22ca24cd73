"""Throughput of ``predict --engine ray`` against the local engine, on the shared NIH images.

Both engines run the same manifest of N real radiographs (512-px PNGs) through the same model
and must write identical rows. Printed: images/s of each, Ray's start-up (``ray.init``) apart,
Ray cold (first run: worker processes and actors start) and warm (second run, new output),
and the overhead against the local engine. The model: ``--model DIR``, else the bundled
model if the package has one, else the tiny test model (``tests/onnx_factory.py``: a mean,
so the figure is reading + preprocessing + engine overhead); ``--cnn efficientnet_b0``
exports an untrained timm CNN at 256 px instead (needs the ``train`` extra): real compute.

Usage::

    nice python benchmarks/bench_ray.py [--n 200] [--model DIR | --cnn efficientnet_b0]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def write_manifest(n: int, path: Path) -> Path:
    """The first `n` NIH rows of the shared manifest, with absolute paths."""
    with open(SHARED / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"][:n]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age_years", "sex"])
        writer.writerows([str(SHARED / r["path"]), r["age_years"], r["sex"]] for r in rows)
    return path


def cnn_model(backbone: str, directory: Path, size: int = 256) -> Path:
    """An untrained timm CNN exported to ONNX with a model card: real inference cost."""
    import timm
    import torch

    from xrayage.card import ModelCard, PreprocessSpec, sha256_file

    net = timm.create_model(backbone, pretrained=False, in_chans=1, num_classes=1).eval()
    directory.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (torch.zeros(1, 1, size, size),), str(directory / "model.onnx"),
                      input_names=["input"], output_names=["age"], opset_version=17,
                      dynamic_axes={"input": {0: "n"}, "age": {0: "n"}}, dynamo=False)
    ModelCard(name=f"bench-{backbone}", version="0", architecture=backbone,
              preprocessing=PreprocessSpec(image_size=size),
              onnx_sha256=sha256_file(directory / "model.onnx")).save(directory)
    return directory


def pick_model(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    """(model directory or name, description)."""
    from xrayage.model import bundled_models

    if args.model:
        return args.model, f"--model {args.model}"
    if args.cnn:
        return str(cnn_model(args.cnn, tmp / "cnn")), f"untrained {args.cnn} at 256 px (ONNX)"
    if "xrayage-default" in bundled_models():
        return "xrayage-default", "bundled xrayage-default"
    sys.path.insert(0, str(REPO))
    from tests.onnx_factory import build_tiny_model

    return str(build_tiny_model(tmp / "tiny")), "tiny test model (64 px mean; no CNN)"


def timed(fn: object, *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--n2", type=int, default=0,
                        help="also time N2 images (warm) to split fixed from per-image cost")
    parser.add_argument("--model", default=None)
    parser.add_argument("--cnn", default=None, help="timm backbone to export, e.g. efficientnet_b0")
    parser.add_argument("--workers", type=int, default=1, help="Ray inference actors")
    args = parser.parse_args()

    import ray
    from ray.data import DataContext

    from xrayage.cli.main import main as cli
    from xrayage.engines.ray_engine import RayOptions, predict_ray

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model, described = pick_model(args, tmp)
        sizes = [args.n] + ([args.n2] if args.n2 > args.n else [])
        manifests = {k: write_manifest(k, tmp / f"manifest{k}.csv") for k in sizes}
        local = {k: timed(cli, ["predict", str(m), "-o", str(tmp / f"local{k}.csv"),
                                "--model", model]) for k, m in manifests.items()}
        init = timed(ray.init, num_cpus=2, include_dashboard=False,
                     object_store_memory=256 * 2**20, log_to_driver=False,
                     configure_logging=False)
        DataContext.get_current().enable_progress_bars = False
        options = RayOptions(num_workers=args.workers)
        try:
            runs = [("cold", args.n), ("warm", args.n)] + [("warm", k) for k in sizes[1:]]
            ray_times = {(label, k): timed(predict_ray, [manifests[k]],
                                           tmp / f"ray_{label}{k}.csv", model=model,
                                           options=options) for label, k in runs}
        finally:
            ray.shutdown()
        same = all((tmp / f"ray_{label}{k}.csv").read_text()
                   == (tmp / f"local{k}.csv").read_text() for label, k in runs)
    n = args.n
    print(f"model: {described}; NIH 512-px PNGs; 2 CPUs; ray actors: {args.workers}; "
          f"rows identical to local: {same}; ray.init {init:.1f} s (not counted)")
    rows = [(f"local, {k}", k, t) for k, t in local.items()]
    rows += [(f"ray {label}, {k}", k, t) for (label, k), t in ray_times.items()]
    for label, k, seconds in rows:
        print(f"{label:16s} {k / seconds:7.1f} images/s  {1000 * seconds / k:7.1f} ms/image"
              f"  ({seconds:.1f} s)")
    warm = ray_times[("warm", n)]
    print(f"ray overhead at {n}: cold {100 * (ray_times[('cold', n)] / local[n] - 1):+.0f}%, "
          f"warm {100 * (warm / local[n] - 1):+.0f}%")
    if len(sizes) > 1:
        k = sizes[1]
        per_local = (local[k] - local[n]) / (k - n)
        per_ray = (ray_times[("warm", k)] - warm) / (k - n)
        print(f"marginal cost ({k} - {n} images): local {1000 * per_local:.1f} ms/image, "
              f"ray {1000 * per_ray:.1f} ms/image; ray fixed cost per run "
              f"{warm - per_ray * n:.1f} s")


if __name__ == "__main__":
    main()
