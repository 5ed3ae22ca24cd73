"""Pool the frozen Xception block maps of the bundled model's split several ways.

Writes one ``.npz`` with, per block 1-11 and per role (train / val of the shipped split):
the g x g grid means for each ``--grids`` g (g = 1: global mean), the global
standard deviation and max; plus ages, sex,
view and patient ids. ``search_heads.py`` fits heads on it. Usage::

    python experiments/extract_maps.py --work /tmp/xrayage-build --size 294 --out feats.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from xrayage.train.augment import AugmentConfig, augment, normalize, to_float
from xrayage.train.fit import TrainConfig, prepare
from xrayage.train.model import AgeNet
from xrayage.train.probe import cached_images

REPO = Path(__file__).resolve().parents[1]
TAPS = [f"block{i}" for i in range(3, 11)]
STRONG = AugmentConfig(rotation_deg=10.0, scale=0.15, translate=0.08, contrast=0.3, gamma=0.4)


def pooled(feats: list[torch.Tensor], grids: list[int]) -> dict[str, np.ndarray]:
    """Per grid g: each map's g x g cell means, (N, sum_l C_l g^2), block-major; plus the
    global standard deviation and max."""
    out: dict[str, list[torch.Tensor]] = {f"g{g}": [] for g in grids} | {"std": [], "max": []}
    for f in feats:
        out["std"].append(f.std(dim=(2, 3)))
        out["max"].append(f.amax(dim=(2, 3)))
        for g in grids:
            out[f"g{g}"].append(F.adaptive_avg_pool2d(f, g).flatten(1))
    return {k: torch.cat(v, 1).numpy().astype(np.float16) for k, v in out.items()}


def equalized(images: np.ndarray, how: str) -> np.ndarray:
    """Histogram-equalise uint8 (N, S, S) images: global (``hist``) or CLAHE (``clahe``)."""
    if how == "hist":
        from PIL import Image, ImageOps

        return np.stack([np.asarray(ImageOps.equalize(Image.fromarray(im))) for im in images])
    from skimage.exposure import equalize_adapthist  # experiments only

    return np.stack([np.round(equalize_adapthist(im, clip_limit=0.01) * 255).astype(np.uint8)
                     for im in images])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/xrayage-build"))
    p.add_argument("--run", type=Path, required=True, help="a run dir holding split.json")
    p.add_argument("--size", type=int, default=294)
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--augment", type=int, metavar="SEED",
                   help="one random training augmentation per image (xrayage.train.augment)")
    p.add_argument("--strong", action="store_true",
                   help="with --augment: wider ranges (rotation 10 deg, zoom 15%%, shift 8%%, "
                        "contrast 0.3, gamma 0.4)")
    p.add_argument("--grids", type=lambda v: [int(g) for g in v.split(",")], default=[1, 2, 3])
    p.add_argument("--equalize", choices=["hist", "clahe"],
                   help="histogram-equalise each image before the network")
    p.add_argument("--inner", action="store_true",
                   help="also pool the maps inside middle-flow blocks 4-11 (after their first "
                        "and second separable convolutions; maps are numbered in forward "
                        "order, so these interleave with the block outputs)")
    p.add_argument("--block12", action="store_true", help="also pool the exit-flow block 12")
    p.add_argument("--source", default="nih_cxr14",
                   help="manifest source; other than NIH, every adult image is role 'ext'")
    p.add_argument("--children", action="store_true",
                   help="the source's images under 18 y instead, as role 'ext'")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.strong and a.augment is None:
        p.error("--strong sets the ranges of --augment; give --augment SEED too")
    torch.set_num_threads(2)
    external = a.source != "nih_cxr14" or a.children
    data = f"manifest:{a.shared.resolve() / 'manifest.csv'}?source={a.source}"
    cfg = TrainConfig(data=[data], out=str(a.run), backbone="legacy_xception",
                      image_size=a.size, feature_levels=[1, 2, 3], taps=TAPS,
                      init_weights=str(a.work / "legacy_xception_imagenet.safetensors"),
                      adults_only=not a.children, val_fraction=0.2, seed=0, num_workers=0,
                      progress=False, resume=None if external else "split",
                      cache_dir=str(a.work / "run" / "cache"))
    datasets, split, cache, _ = prepare(cfg)
    samples = [s for d in datasets for s in d.samples if not a.children or s.age_years < 18]
    levels = [1, 2, 3, 4] if a.block12 else [1, 2, 3]
    taps = [*TAPS, "block12"] if a.block12 else TAPS
    if a.inner:  # the in-place ReLU that follows makes these ReLU(BN(conv)) maps
        taps = [*taps, *(f"block{b}.rep.{i}" for b in range(4, 12) for i in (2, 5))]
    net = AgeNet("legacy_xception", 1, levels, init_weights=cfg.init_weights, taps=taps).eval()
    spec = cfg.spec()
    arrays: dict[str, np.ndarray] = {}
    for role in ("ext",) if external else ("train", "val"):
        found, images = cached_images(cache, samples if external else split.assign(samples, role))
        if a.equalize:
            images = equalized(images, a.equalize)
        parts: list[dict[str, np.ndarray]] = []
        t0 = time.time()
        generator = torch.Generator().manual_seed(a.augment or 0)
        with torch.no_grad():
            for i in range(0, len(images), 16):
                x = to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + 16])))
                if a.augment is not None:
                    x = augment(x, STRONG if a.strong else AugmentConfig(), generator)
                x = normalize(x, spec)
                if a.hflip:
                    x = torch.flip(x, dims=(-1,))
                parts.append(pooled(net.features(x), a.grids))
        print(f"{role}: {len(found)} images in {time.time() - t0:.0f} s", flush=True)
        for k in parts[0]:
            arrays[f"{role}_{k}"] = np.concatenate([q[k] for q in parts])
        arrays[f"{role}_age"] = np.array([s.age_years for s in found])
        arrays[f"{role}_patient"] = np.array([s.patient_id for s in found])
        arrays[f"{role}_sex"] = np.array([s.sex or "" for s in found])  # "": unknown
        arrays[f"{role}_view"] = np.array([s.view for s in found])
        arrays[f"{role}_path"] = np.array([str(s.path) for s in found])
    arrays["channels"] = np.array(net.channels)
    np.savez(a.out, **arrays)


if __name__ == "__main__":
    main()
