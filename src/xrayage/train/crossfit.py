"""Out-of-fold X-ray age: k patient-disjoint models, each image predicted by one that never saw it.

Predictions on training images are biased (their gaps shrink towards zero), so a cohort
analysis of a model's own training data must use out-of-fold predictions. :func:`crossfit`
assigns the folds with :func:`~xrayage.folds.assign_folds` and writes the predictions
with :func:`~xrayage.train.oof.write_oof`: a ``fold`` column and a sidecar
``PRED.csv.provenance.json`` that ``xrayage analyze`` reads. (Before 0.2 this module was
``xrayage.cohort.crossfit``.)
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

from ..card import ModelCard
from ..datasets import Sample, filter_samples, load_dataset
from ..folds import assign_folds
from ..predict import RECORD_FIELDS
from .oof import write_oof

logger = logging.getLogger(__name__)

EXTRA_FIELDS = ("findings", "source")
"""Columns written after :data:`~xrayage.train.oof.OOF_FIELDS` and the other
:data:`~xrayage.predict.RECORD_FIELDS`."""


def _write_manifest(path: Path, samples: Sequence[Sample], licences: dict[str, str]) -> bool:
    """Write a training manifest; return True if an identical one was already there."""
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(["path", "source", "patient_id", "age_years", "sex", "view", "findings",
                "licence"])
    for s in samples:
        w.writerow([str(Path(s.path).resolve()), s.source, s.patient_id, s.age_years,
                    s.sex or "", s.view, "|".join(s.findings),
                    licences.get(str(s.path), "unknown")])
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
        The predictions CSV: :data:`~xrayage.train.oof.OOF_FIELDS`, the other
        :data:`~xrayage.predict.RECORD_FIELDS`, then :data:`EXTRA_FIELDS`.
        ``age_gap_corrected`` uses a bias correction fitted on all out-of-fold predictions
        (recorded in the sidecar).

    Raises
    ------
    ValueError
        A sample without a patient id, or fewer patients than folds.
    """
    from ..predict import PredictInput, XRayAge
    from .export import export
    from .fit import check_config, train_model

    check_config(cfg)  # every option, before any fold's work
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
    nameless = next((s for s in samples if not s.patient_id), None)
    if nameless is not None:
        raise ValueError(f"{nameless.path}: no patient_id; crossfit folds must be "
                         "patient-disjoint")
    folds = assign_folds([s.patient_id for s in samples], k,
                         ages=[s.age_years for s in samples], seed=cfg.seed)
    rows: list[dict[str, Any]] = []
    fold_info = []
    for i in range(k):
        fold_dir = out / f"fold{i}"
        fold_dir.mkdir(exist_ok=True)
        train = [s for s, f in zip(samples, folds, strict=True) if f != i]
        test = [s for s, f in zip(samples, folds, strict=True) if f == i]
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
        # the manifest's sex and view override the header's, as in ``xrayage predict``
        items = [PredictInput(source=s.path, name=str(s.path), age_years=s.age_years,
                              sex=s.sex or None, view=s.view or None) for s in test]
        for s, est in zip(test, estimator.predict_many(items), strict=True):
            rows.append({**est.to_record(), "fold": i, "patient_id": s.patient_id,
                         "age_years": s.age_years, "sex": s.sex, "view": s.view,
                         "findings": "|".join(s.findings), "source": s.source})
        fold_info.append({"fold": i, "train_images": len(train), "held_out_images": len(test),
                          "model": str(fold_dir / "model"), "onnx_sha256": card.onnx_sha256})
    path = Path(predictions) if predictions else out / "oof_predictions.csv"
    return write_oof(path, rows, method="xrayage.train.crossfit.crossfit", k=k, seed=cfg.seed,
                     fields=[*RECORD_FIELDS, *EXTRA_FIELDS], folds=fold_info,
                     train_config=dataclasses.asdict(cfg))


__all__ = ["EXTRA_FIELDS", "crossfit"]
