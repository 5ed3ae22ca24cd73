"""Pool the frozen Xception maps of a seeded sample of the lung-masked RSNA images.

For the domain-adaptation experiment of ``docs/experiments.md`` section 5: the same
network, size and grids as ``extract_maps.py``, on ``aux_rsna_lungmasked`` adults. Their
lung intensities are inverted back (the background stays black). Writes an ``.npz``
whose rows are role ``ext``. Usage::

    python experiments/extract_lungmasked.py --work /tmp/xrayage-build --n 2000 --out lm.npz
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from extract_maps import TAPS, pooled
from PIL import Image

from xrayage.card import PreprocessSpec
from xrayage.train.augment import normalize, to_float
from xrayage.train.model import AgeNet

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/xrayage-build"))
    p.add_argument("--size", type=int, default=294)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--grids", type=lambda v: [int(g) for g in v.split(",")], default=[1, 3])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(2)
    with open(a.shared / "aux_rsna_lungmasked" / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if float(r["age_years"]) >= 18]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[: a.n]]
    spec = PreprocessSpec(image_size=a.size, square="crop", channels=1, mean=(0.5,),
                          std=(0.5,), quantize=True)
    net = AgeNet("legacy_xception", 1, [1, 2, 3], taps=TAPS,
                 init_weights=str(a.work / "legacy_xception_imagenet.safetensors")).eval()
    parts, t0 = [], time.time()
    with torch.no_grad():
        for i in range(0, len(rows), 16):
            batch = []
            for r in rows[i:i + 16]:
                img = Image.open(a.shared / r["path"]).convert("L")
                arr = np.asarray(img.resize((a.size, a.size), Image.LANCZOS), np.uint8)
                batch.append(np.where(arr > 8, 255 - arr, 0).astype(np.uint8))
            x = normalize(to_float(torch.from_numpy(np.stack(batch))), spec)
            parts.append(pooled(net.features(x), a.grids))
    print(f"{len(rows)} images in {time.time() - t0:.0f} s", flush=True)
    arrays = {f"ext_{k}": np.concatenate([q[k] for q in parts]) for k in parts[0]}
    arrays["ext_age"] = np.array([float(r["age_years"]) for r in rows])
    arrays["ext_patient"] = np.array([r["patient_id"] for r in rows])
    arrays["channels"] = np.array(net.channels)
    np.savez(a.out, **arrays)


if __name__ == "__main__":
    main()
