"""Issue 16, point 2: re-check, on 1,312 adults, choices that were saturated at 528 per fold.

One forward pass of the bundled Xception recipe's backbone (ImageNet weights, the bundled
preprocessing, one view per image) over the shared adult NIH images, pooled several ways, each
scored by the same nested, patient-disjoint ridge cross-fitting
(``xrayage.train.probe.crossfit_ridge``) and on the COVID-19 collection's adults (fitted on all
NIH):

* grid 3 (the bundled features), grid 2, grid 6;
* grid 3 plus the exit flow (block 12's output and the final 2048-channel map).

Usage: ``python experiments/saturated_choices.py --weights legacy_xception_imagenet.safetensors
--work /tmp/saturated`` (``scripts/build_default_model.py --weights-only`` makes the weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
TAPS = [f"block{i}" for i in range(3, 11)]


def pooled(weights: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Grid-pooled features per variant, float32 (N, D)."""
    import torch
    from torch.nn.functional import adaptive_avg_pool2d

    from xrayage.card import PreprocessSpec
    from xrayage.train.augment import normalize, to_float
    from xrayage.train.model import AgeNet

    torch.set_num_threads(2)
    net = AgeNet("legacy_xception", in_chans=1, feature_levels=[1, 2, 3, 4],
                 taps=[*TAPS, "block12"], init_weights=weights, grid=3).eval()
    spec = PreprocessSpec(image_size=images.shape[1])
    out: dict[str, list[np.ndarray]] = {"grid3": [], "grid2": [], "grid6": [], "exit": []}
    with torch.no_grad():
        for start in range(0, len(images), 16):
            x = to_float(torch.from_numpy(np.ascontiguousarray(images[start:start + 16])))
            maps = net.features(normalize(x, spec))
            # levels 1, 2, 3, 4 then the taps block3..block10, block12
            base = [maps[0], maps[1], maps[2], *maps[4:12]]
            exit_flow = [maps[12], maps[3]]  # block12's output, the final 2048-channel map

            def cells(ms: list[torch.Tensor], g: int) -> np.ndarray:
                return torch.cat([adaptive_avg_pool2d(m, g).flatten(1) for m in ms],
                                 1).numpy().astype(np.float32)

            for g in (2, 3, 6):
                out[f"grid{g}"].append(cells(base, g))
            out["exit"].append(np.hstack([out["grid3"][-1], cells(exit_flow, 3)]))
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/saturated"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from second_backbone import rows, squares

    from xrayage.folds import assign_folds
    from xrayage.metrics import bootstrap_ci
    from xrayage.train.probe import choose_alpha, crossfit_ridge, fit_ridge

    nih, covid = rows(args.shared, "nih_cxr14"), rows(args.shared, "covid_idc")
    y = np.array([float(r["age_years"]) for r in nih])
    y_other = np.array([float(r["age_years"]) for r in covid])
    patients = [r["patient_id"] for r in nih]
    start = time.perf_counter()
    feats = {name: pooled(args.weights, squares(items, args.shared, 294))
             for name, items in (("nih", nih), ("covid", covid))}
    print(f"features in {time.perf_counter() - start:.0f} s", flush=True)
    for variant in ("grid3", "grid2", "exit", "grid6"):
        x, x_other = feats["nih"][variant], feats["covid"][variant]
        t = time.perf_counter()
        oof, _ = crossfit_ridge(x, y, patients)
        alpha, _ = choose_alpha(x, y, assign_folds(patients, 5, ages=y, seed=1))
        w, b = fit_ridge(x, y, alpha)
        other = x_other @ w + b
        ci = bootstrap_ci(age_years=y, xray_age=oof, clusters=patients, seed=0)
        print(variant, json.dumps({
            "features": x.shape[1], "mae": round(float(np.abs(oof - y).mean()), 3),
            "ci95": ci["mae"], "r": round(float(np.corrcoef(oof, y)[0, 1]), 3),
            "other_mae": round(float(np.abs(other - y_other).mean()), 3),
            "other_bias": round(float((other - y_other).mean()), 2),
            "seconds": round(time.perf_counter() - t)}), flush=True)
        del x, x_other


if __name__ == "__main__":
    main()
