"""Data-loader throughput from the cache against training-step throughput, on this machine.

Usage::

    python benchmarks/bench_train_loader.py [--images 128] [--steps 4] [--batch-size 16]

For each (backbone, image size) it prints images/s of

- the loader: ``DataLoader`` over the memory-mapped uint8 cache (``--workers`` processes),
  plus the on-device augmentation and normalisation a training step applies;
- a training step: forward, backward and AdamW on a batch (float32, CPU);

and their ratio. The loader must never be the bottleneck: the ratio should be well above 1.
The cache build rate (decode PNG + resize, all cores) is printed too: it is paid once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from xrayage.card import PreprocessSpec
from xrayage.datasets import load_dataset
from xrayage.train.augment import AugmentConfig, augment, normalize, to_float
from xrayage.train.cache import build_cache
from xrayage.train.data import CachedImages
from xrayage.train.model import AgeNet

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "manifest.csv"
CASES = [("resnet18", 128), ("resnet18", 224), ("efficientnet_b0", 224),
         ("legacy_xception", 224)]


def loader_rate(data: CachedImages, spec: PreprocessSpec, batch: int, workers: int,
                passes: int = 3) -> float:
    """Images/s through DataLoader + augmentation + normalisation."""
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    next(iter(loader))  # start the workers
    count, start = 0, time.perf_counter()
    for _ in range(passes):
        for images, _ages in loader:
            normalize(augment(to_float(images), AugmentConfig()), spec)
            count += len(images)
    return count / (time.perf_counter() - start)


def step_rate(backbone: str, spec: PreprocessSpec, batch: int, steps: int) -> float:
    """Images/s of forward + backward + AdamW step."""
    net = AgeNet(backbone, spec.channels, image_size=spec.image_size).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, spec.channels, spec.image_size, spec.image_size)
    y = torch.full((batch,), 50.0)

    def step() -> None:
        age, _ = net(x)
        torch.nn.functional.l1_loss(age, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    samples = load_dataset(f"manifest:{SHARED}?source=nih_cxr14").samples[: args.images]
    print(f"torch threads {torch.get_num_threads()}, {len(samples)} NIH images, "
          f"batch {args.batch_size}, loader workers {args.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        caches = {}
        for size in sorted({s for _, s in CASES}):
            spec = PreprocessSpec(image_size=size)
            start = time.perf_counter()
            cache = build_cache(samples, spec, tmp, progress=False)
            rate = len(samples) / (time.perf_counter() - start)
            data = CachedImages(cache, samples)
            caches[size] = (spec, data, loader_rate(data, spec, args.batch_size, args.workers))
            print(f"cache build {size:4d} px: {rate:7.1f} img/s (once); "
                  f"loader {caches[size][2]:8.1f} img/s")
        print(f"{'backbone':<18}{'size':>5}{'loader img/s':>14}{'train img/s':>13}{'ratio':>8}")
        for backbone, size in CASES:
            spec, _data, loader = caches[size]
            train = step_rate(backbone, spec, args.batch_size, args.steps)
            print(f"{backbone:<18}{size:>5}{loader:>14.1f}{train:>13.1f}{loader / train:>8.1f}")


if __name__ == "__main__":
    main()
