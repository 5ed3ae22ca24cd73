"""Out-of-fold X-ray age: k patient-disjoint models, each image predicted by one that never saw it.

Predictions on training images are biased (their gaps shrink towards zero), so a cohort
analysis of a model's own training data must use out-of-fold predictions. :func:`crossfit`
writes them with a ``fold`` column and a sidecar ``PRED.csv.provenance.json`` that
``xrayage analyze`` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..datasets import Sample, filter_samples, load_dataset
from ..datasets.splits import assign_folds
from ..predict import RECORD_FIELDS
from .table import SIDECAR_SUFFIX

logger = logging.getLogger(__name__)

EXTRA_FIELDS = ("fold", "patient_id", "age_years", "sex", "view", "findings", "source")
"""Columns written after :data:`~xrayage.predict.RECORD_FIELDS`."""


def _write_manifest(path: Path, samples: Sequence[Sample], licences: dict[str, str]) -> bool:
    """Write a training manifest; return True if an identical one was already there."""
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(["path", "source", "patient_id", "age_years", "sex", "view", "findings",
                "licence"])
    for s in samples:
        w.writerow([str(Path(s.path).resolve()), s.source, s.patient_id, s.age_years, s.sex,
                    s.view, "|".join(s.findings), licences.get(str(s.path), "unknown")])
    data = buffer.getvalue().encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return True
    path.write_bytes(data)
    return False


def crossfit(cfg: Any, k: int = 5, predictions: str | Path | None = None,
             threads: int | None = None) -> Path:
    """Train `k` models on patient-disjoint folds and predict each fold with its own model.

    Parameters
    ----------
    cfg : xrayage.train.fit.TrainConfig
        The training settings; ``cfg.data`` and filters choose the cohort and ``cfg.out``
        the run folder (``fold0/`` ... with each run and its exported ``model/``).
    k : int
        Folds (>= 2).
    predictions : path, optional
        Output CSV (default ``cfg.out/oof_predictions.csv``).
    threads : int, optional
        ONNX Runtime threads for the predictions.

    A fold whose exported model exists and whose training images and settings are unchanged
    is not retrained, so an interrupted run resumes at the first unfinished fold.

    Returns
    -------
    Path
        The predictions CSV: :data:`~xrayage.predict.RECORD_FIELDS`, then
        :data:`EXTRA_FIELDS`. ``age_gap_corrected`` uses a bias correction fitted on all
        out-of-fold predictions (recorded in the sidecar).
    """
    from ..calibration import fit_bias_correction
    from ..predict import PredictInput, XRayAge
    from ..train.export import export
    from ..train.fit import train_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    licences: dict[str, str] = {}
    for spec in cfg.data:
        d = load_dataset(spec, role="train")
        age_range = None
        if cfg.min_age is not None or cfg.max_age is not None:
            age_range = (cfg.min_age or 0.0, cfg.max_age if cfg.max_age is not None else 200.0)
        kept = filter_samples(d.samples, frontal_only=not cfg.all_views,
                              adults_only=cfg.adults_only, age_range=age_range)
        samples += kept
        licences.update({str(s.path): d.licence for s in kept})
    folds = assign_folds(samples, k, seed=cfg.seed)
    rows: list[dict[str, Any]] = []
    fold_info = []
    for i in range(k):
        fold_dir = out / f"fold{i}"
        fold_dir.mkdir(exist_ok=True)
        train = [s for s in samples if folds[s.patient_id] != i]
        test = [s for s in samples if folds[s.patient_id] == i]
        same = _write_manifest(fold_dir / "train_manifest.csv", train, licences)
        fold_cfg = dataclasses.replace(
            cfg, data=[f"manifest:{fold_dir / 'train_manifest.csv'}"], out=str(fold_dir),
            cache_dir=cfg.cache_dir or str(out / "cache"))
        logger.info("crossfit fold %d/%d: %d train, %d held-out images", i + 1, k, len(train),
                    len(test))
        stamp = json.dumps(dataclasses.asdict(fold_cfg), sort_keys=True, default=str)
        stamp_file = fold_dir / "crossfit_config.json"
        same = same and stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp
        stamp_file.write_text(stamp, encoding="utf-8")
        if same and (fold_dir / "model" / "model_card.json").is_file():
            logger.info("crossfit fold %d: reusing %s (same training images)", i,
                        fold_dir / "model")
            card = ModelCard.load(fold_dir / "model")
        else:
            card = export(train_model(fold_cfg), fold_dir / "model", val_metrics=False)
        estimator = XRayAge.load(fold_dir / "model", threads=threads)
        items = [PredictInput(source=s.path, name=str(s.path), age_years=s.age_years,
                              sex=s.sex or None) for s in test]
        for s, est in zip(test, estimator.predict_many(items), strict=True):
            rows.append({**est.to_record(), "fold": i, "patient_id": s.patient_id,
                         "age_years": s.age_years, "sex": s.sex, "view": s.view,
                         "findings": "|".join(s.findings), "source": s.source})
        fold_info.append({"fold": i, "train_images": len(train), "held_out_images": len(test),
                          "model": str(fold_dir / "model"), "onnx_sha256": card.onnx_sha256})
    correction = _correct(rows, fit_bias_correction)
    path = Path(predictions) if predictions else out / "oof_predictions.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        w = csv.DictWriter(handle, fieldnames=[*RECORD_FIELDS, *EXTRA_FIELDS])
        w.writeheader()
        for r in rows:
            w.writerow({key: ";".join(v) if isinstance(v, list) else ("" if v is None else v)
                        for key, v in r.items() if key in w.fieldnames})
    sidecar = {"out_of_fold": True, "patient_disjoint": True, "k": k, "seed": cfg.seed,
               "folds": fold_info, "bias_correction": correction,
               "train_config": dataclasses.asdict(cfg)}
    Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(sidecar, indent=1, default=str)
                                                + "\n", encoding="utf-8")
    return path


def _correct(rows: list[dict[str, Any]], fit_bias_correction: Any) -> dict[str, Any] | None:
    """Refit the age-bias correction on the pooled out-of-fold predictions (in place)."""
    ok = [r for r in rows if r["xray_age"] is not None and r["chronological_age"] is not None]
    if len(ok) < 3:
        return None
    bc = fit_bias_correction(np.array([r["xray_age"] for r in ok], float),
                             np.array([r["chronological_age"] for r in ok], float))
    for r in ok:
        r["age_gap_corrected"] = round(bc.corrected_gap(r["xray_age"], r["chronological_age"]), 2)
    return {"slope": bc.slope, "intercept": bc.intercept, "n": bc.n,
            "fitted_on": "pooled out-of-fold predictions"}
