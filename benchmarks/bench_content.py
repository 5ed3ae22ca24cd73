"""The extra inference cost of the content quality checks (interleaved A/B runs).

A: the model's ONNX run alone (age); B: the same run also returning the features, plus the
content graph and its findings. Both on the same preprocessed shared NIH images, batches
of 8, 2 threads; prints the median time per image of each and B's overhead, and the time of
the content graph alone (on a loaded machine the A/B difference is mostly noise; the graph
alone is the cost the checks add).

Usage::

    python benchmarks/bench_content.py [--n 96] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np

from xrayage.model import load_model
from xrayage.pipeline import PredictInput, prepare

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = load_model(args.model, threads=args.threads)
    if model.content is None:
        raise SystemExit("the model has no content checks")
    with open(SHARED / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "nih_cxr14"][: args.n]
    spec = model.card.preprocessing
    tensors = [p.tensor for p in (prepare(PredictInput(str(SHARED / r["path"]), r["path"]),
                                          spec, checks=[]) for r in rows)
               if p.tensor is not None]
    batches = [np.concatenate(tensors[i:i + 8]) for i in range(0, len(tensors), 8)]
    content = model.content

    def plain() -> None:
        for b in batches:
            model.run(b)

    def checked() -> None:
        for b in batches:
            out = model.run(b, features=True)
            assert out.features is not None
            for s in content.scores(out.features):
                content.findings(s, None)

    times: dict[str, list[float]] = {"model alone": [], "model + content checks": []}
    plain()  # warm-up
    for _ in range(args.repeats):
        for name, run in (("model alone", plain), ("model + content checks", checked)):
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / len(tensors))
    base = statistics.median(times["model alone"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<24} {1000 * med:7.1f} ms/image  ({1 / med:5.1f} images/s)")
    extra = statistics.median(times["model + content checks"]) / base - 1
    print(f"extra cost of the content checks: {100 * extra:+.1f}% "
          f"(n = {len(tensors)} images x {args.repeats} interleaved repeats)")
    features = [model.run(b, features=True).features for b in batches]
    start = time.perf_counter()
    for _ in range(args.repeats):
        for f in features:
            for s in content.scores(f):  # type: ignore[arg-type]
                content.findings(s, None)
    alone = (time.perf_counter() - start) / (args.repeats * len(tensors))
    print(f"the content graph and findings alone: {1000 * alone:.2f} ms/image "
          f"({100 * alone / base:.2f}% of the model's time)")


if __name__ == "__main__":
    main()
