"""Site adaptation: refit a model's linear head on a hospital's own labelled radiographs.

The bundled model's age is a linear head on frozen features, so a site can refit the head
from a few hundred of its own films on a CPU. :func:`adapt` reads the site's manifest
through the normal pipeline (quality checks apply; children, laterals and rejects are left
out and counted), collects the model's ``features`` once (``pipeline.stream(...,
on_features=...)``), and chooses among these recipes by patient-grouped cross-validation:

- ``base``: the model unchanged (λ → ∞, the "no change" candidate);
- ``shift``: the model plus a constant (the site's mean error removed);
- ``recal``: a plain linear recalibration ``a + b·ŷ₀`` of the model's age;
- ``ridge(anchor, λ)``: the anchor (``shift`` or ``recal``) plus a ridge update of the
  head, in the site-standardised feature space: minimise
  ``‖y − anchor − Zδ‖² + λ‖δ‖²``, i.e. ``‖y − Xw‖² + λ‖w − w₀'‖²`` with ``w₀'`` the anchor's
  head, the penalty measured per standardised feature (λ in units of the mean diagonal
  of the site's Gram matrix);
- ``pooled(α×1)``, with ``prior=`` (the base model's own training images) and instead of
  the ridge updates: the head refitted on the training images and the site's together
  (:mod:`.prior`).

The CV error is averaged over three fold draws; below :data:`MIN_RIDGE_IMAGES` images
only the recalibrations are tried, and kept only when they beat the model by half a
standard error (:func:`policy`). As ``base`` is a candidate, the chosen recipe is never
worse than the model on the site's own cross-validation. The before/after is measured
honestly by nested cross-fitting (:func:`nested_oof`): each outer fold's recipe and λ are
chosen by an inner grouped CV on the other folds only. The age-bias correction and the
interval are refitted on these out-of-fold predictions
(:func:`xrayage.calibration.calibrate_card`, as ``xrayage calibrate`` does).

The adapted model is an ordinary model directory: a copy of ``model.onnx`` with the head's
weights (and the class activation map's copy of them) replaced, the content checks'
graph copied unchanged, and a card that records the base model, the local n, the recipe
and the before/after, and no image path or identifier of the site. A model without a
linear head on an exported ``features`` output (an imported TorchScript model) gets the
recalibration recipes only, appended to its graph, and its card says so.

The package: :mod:`.recipes` (the candidates and their CV), :mod:`.prior` (the pooled
ridge), :mod:`.head` (the graph's
linear head), :mod:`.site` (the site's films and scores), :mod:`.report`; :func:`adapt`
ties them together. Needs numpy, onnxruntime and ``onnx`` (the ``analysis`` extra;
matplotlib draws the report's plots); no torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import calibrate_card, interval
from ..card import ModelCard, sha256_file
from ..datasets import Sample
from ..errors import ModelError
from ..estimate import AgeEstimate
from ..extras import require
from ..model import AgeModel, resolve_model_dir
from ..pipeline import PredictInput, stream
from .head import LinearHead, add_affine, find_linear_head, set_linear_head
from .prior import Prior, fit_prior
from .recipes import (
    FEATURE,
    FEW_IMAGES,
    FOLDS,
    MIN_PATIENTS,
    MIN_RIDGE_IMAGES,
    Nested,
    Recipe,
    Update,
    candidates,
    choose,
    complexity,
    cv_predictions,
    fit_recipes,
    nested_oof,
    policy,
    predict_all,
)
from .report import write_report
from .site import SiteData, load_site, paired_gain, read_site, scored

logger = logging.getLogger(__name__)



@dataclass
class Adaptation:
    """The result of :func:`adapt`: the model directory written and its summary."""

    directory: Path
    summary: dict[str, Any]
    recipe: Recipe
    nested: Nested
    site: SiteData

    @property
    def warnings(self) -> list[str]:
        """Plain-language warnings (few images, no gain, recalibration only)."""
        return list(self.summary["warnings"])


def adapt(site: str | os.PathLike[str] | Sequence[Sample], out: str | os.PathLike[str], *,
          model: str | os.PathLike[str] | None = None, name: str | None = None,
          threads: int | None = None, batch_size: int = 8, coverage: float | None = None,
          seed: int = 0, report: bool = True, min_ridge_images: int = MIN_RIDGE_IMAGES,
          prior: str | os.PathLike[str] | Sequence[Sample] | None = None) -> Adaptation:
    """Adapt a model to a site's labelled radiographs and write the adapted model.

    Parameters
    ----------
    site : path, dataset spec or sequence of Sample
        The site's manifest (``path, patient_id, age_years``, optional ``sex, view``).
    out : path
        A new (or empty) directory for the adapted model, its ``report.html`` and
        ``summary.json``.
    model : str or path, optional
        The base model: a bundled model's name or a model directory (default: bundled).
    name : str, optional
        The adapted model's name (default ``<base>-site``).
    threads : int, optional
        ONNX Runtime threads.
    batch_size : int
    coverage : float, optional
        Interval coverage (default: the base card's, else 0.9).
    seed : int
        Fold assignment.
    report : bool
        Write ``report.html`` with plots (needs matplotlib).
    min_ridge_images : int
        With fewer usable images, only the recalibrations are candidates.
    prior : path, dataset spec or sequence of Sample, optional
        The base model's own training images (for the bundled model: its adult NIH
        ChestX-ray14 images). They go through the same pipeline once, and the pooled
        ridge (:mod:`.prior`) replaces the ridge candidates. Needs a linear head and at
        least `min_ridge_images` usable site images (else it is not read).

    Returns
    -------
    Adaptation

    Raises
    ------
    ValueError
        ``out`` is not empty, or too few usable images or patients.
    """
    onnx = require("onnx", "analysis", FEATURE)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: exists and is not empty")
    samples = list(site) if not isinstance(site, str | os.PathLike) else load_site(site)
    base_dir = resolve_model_dir(model)
    base_model = AgeModel(base_dir, threads=threads)
    card = base_model.card
    graph = onnx.load(str(base_dir / card.onnx_file))
    head = find_linear_head(graph, card)
    started = time.perf_counter()
    data = read_site(base_model, samples, features=head is not None, batch_size=batch_size)
    pooled = None
    if prior is not None and head is not None and len(data.age) >= min_ridge_images:
        pooled = _read_prior(base_model, prior, head, batch_size, seed)
    patients = data.patients
    n_patients = len(set(patients))
    if n_patients < MIN_PATIENTS or len(data.age) < 2 * FOLDS:
        raise ValueError(f"{len(data.age)} usable images of {n_patients} patients: adaptation "
                         f"needs at least {MIN_PATIENTS} patients")
    x, y, base = data.features, data.age, data.base
    if head is not None and x is not None:
        check = np.abs(x.astype(np.float64) @ head.weight + head.bias - base).max()
        if check > 0.05:
            logger.warning("the head read from the graph reproduces the model's age to %.3g y "
                           "only; adapting by recalibration", check)
            head, x, pooled = None, None, None
    recipes, tolerance = policy(len(y), head is not None, min_ridge_images,
                                prior=pooled is not None)
    cover = coverage or (card.conformal.coverage if card.conformal else 0.9)
    t_fit = time.perf_counter()
    recipe, cv_mae, _ = choose(x, y, base, patients, recipes, seed, tolerance, prior=pooled)
    update = fit_recipes(x, y, base, [recipe], pooled)[recipe]
    nested = nested_oof(x, y, base, patients, recipes, cover, seed, views=data.view,
                        tolerance=tolerance, prior=pooled)
    fit_seconds = time.perf_counter() - t_fit
    base_bounds = None
    if card.conformal is not None and not card.conformal.scaled:
        b_arr = np.array([interval(card.conformal, float(p), view=v)
                          for p, v in zip(base, data.view, strict=True)])
        base_bounds = (b_arr[:, 0], b_arr[:, 1])
    before = scored(base, y, patients, base_bounds, seed)
    after = scored(nested.oof, y, patients, (nested.lower, nested.upper), seed)
    gain = paired_gain(base, nested.oof, y, patients, seed=seed)

    # the adapted card
    new = ModelCard.from_dict(card.to_dict())
    new.name = name or f"{card.name}-site"
    new.version = f"{card.version}+adapted"
    calibrate_card(new, xray_age=nested.oof, age_years=y, groups=patients, views=data.view,
                   sexes=data.sex, fold=nested.fold.tolist(), coverage=cover, seed=seed)
    warnings = _warnings(len(y), recipe, head is not None, gain, cv_mae, min_ridge_images,
                         pooled is not None)
    base_sha = card.onnx_sha256 or sha256_file(base_dir / card.onnx_file)
    local = {"images": len(y), "patients": n_patients, "age_min": float(y.min()),
             "age_max": float(y.max()), "age_mean": float(y.mean()),
             "images_read": data.images_read, "excluded": data.excluded}
    method = ("ridge toward the base head in the site-standardised feature space"
              + (", a ridge pooled with the base model's training images" if pooled else "")
              + ", or a recalibration, chosen by 5-fold patient-grouped CV (base model "
              "included)" if head is not None else
              "recalibration only (a + b * age of the base model, chosen by 5-fold "
              "patient-grouped CV, base model included): the model has no linear head on "
              "exported features")
    adaptation = {
        "base_model": {"name": card.name, "version": card.version, "onnx_sha256": base_sha},
        "local": local, "method": method,
        # True: the graph's own linear head was rewritten; False: a + b * age appended
        "linear_head": head is not None,
        "recipe": recipe.to_dict(), "lambda": recipe.to_dict()["lambda"],
        "prior": None if pooled is None else {
            "images": pooled.images, "patients": pooled.patients, "alpha": pooled.alpha,
            "grid": pooled.cells,
            "what": "the base model's training images, pooled with the site's (no path or "
                    "identifier of them kept)"},
        "lambda_units": "mean diagonal of the site's standardised Gram matrix",
        "cv_mae": {r.label: round(v, 4) for r, v in cv_mae.items()},
        "update": {"a": update.a, "b": update.b, "offset": update.offset},
        "content_checks": "the base model's content graph and thresholds, copied unchanged "
                          "(fitted on the base model's training data, not on this site)",
        "validation": "nested 5-fold patient-disjoint cross-fitting on the site's images "
                      "(recipe and λ chosen on inner folds only)",
        "nested_recipes": [r.label for r in nested.chosen],
        "before": before, "after": after, "gain": gain, "warnings": warnings,
    }
    # the base export's torch/ONNX check does not describe this graph: ours is in adaptation
    new.extra = {**{k: v for k, v in card.extra.items() if k != "verification"},
                 "adaptation": adaptation}
    new.training_data = [*card.training_data, {
        "name": "site adaptation", "adapter": "xrayage adapt", "images": len(y),
        "patients": n_patients, "sources": [], "age_min": float(y.min()),
        "age_max": float(y.max()),
        "licence": "the site's own (not recorded); no image path or patient identifier kept"}]
    new.metrics = {**{k: v for k, v in card.metrics.items()
                      if k in ("train_median_age", "train_mean_age")},
                   "base_validation": card.metrics.get("validation"),
                   "site_before": before, "site_after": after}
    new.limits = [*card.limits, "Adapted to one site's radiographs "
                  f"({len(y)} images, ages {y.min():.0f}-{y.max():.0f}); its content-check "
                  "thresholds are the base model's."]
    new.description = (f"{card.name} {card.version} adapted to a site's own radiographs "
                       f"({method}). " + card.description)

    # the adapted graph
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in base_dir.iterdir():
        if item.is_file() and item.name not in (card.onnx_file, "model_card.json"):
            (out_dir / item.name).write_bytes(item.read_bytes())
    cam_name = card.outputs.get("cam")
    has_cam = bool(cam_name) and cam_name in {o.name for o in graph.graph.output}
    if head is not None:
        weight, bias = update.head(head.weight, head.bias)
        set_linear_head(graph, head, weight, bias)
        if has_cam and not head.cam:
            warnings.append("the class activation map is not built from the head's weights "
                            "in a way xrayage can rewrite: the adapted model has no heat map")
            new.outputs = {k: v for k, v in new.outputs.items() if k != "cam"}
        if "cam_bias" in new.extra:
            new.extra["cam_bias"] = bias
    else:
        weight, bias = np.zeros(0), math.nan
        outputs = {str(card.outputs["age"]): (update.a + update.offset, update.b)}
        if has_cam:
            outputs[str(cam_name)] = (0.0, update.b)
        add_affine(graph, outputs)
        if "cam_bias" in new.extra:
            new.extra["cam_bias"] = update.a + update.offset + update.b * float(
                new.extra["cam_bias"])
    onnx.save(graph, str(out_dir / new.onnx_file))
    new.onnx_sha256 = sha256_file(out_dir / new.onnx_file)
    new.save(out_dir)
    adapted = AgeModel(out_dir, threads=threads)
    adaptation["verification"] = _verify(adapted, samples, data, update,
                                         (weight, bias) if head is not None else None)
    new.extra["adaptation"] = adaptation
    new.save(out_dir)
    elapsed = time.perf_counter() - started
    summary = {
        "base_model": adaptation["base_model"], "adapted_model": {
            "name": new.name, "version": new.version, "onnx_sha256": new.onnx_sha256},
        "local": local, "method": method, "recipe": recipe.to_dict(),
        "cv_mae": adaptation["cv_mae"], "nested_recipes": adaptation["nested_recipes"],
        "before": before, "after": after, "gain": gain,
        "bias_correction": (None if new.bias_correction is None
                            else dataclasses.asdict(new.bias_correction)),
        "conformal": None if new.conformal is None else dataclasses.asdict(new.conformal),
        "warnings": warnings,
        "verification": adaptation["verification"],
        "seconds": {"features": round(data.seconds, 1), "fit_and_validation": round(
            fit_seconds, 1), "total": round(elapsed, 1)},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=_json) + "\n")
    if report:
        write_report(out_dir / "report.html", summary, base, nested.oof, y)
    for line in warnings:
        logger.warning("%s", line)
    return Adaptation(out_dir, summary, recipe, nested, data)


def _read_prior(model: AgeModel, prior: str | os.PathLike[str] | Sequence[Sample],
                head: LinearHead, batch_size: int, seed: int) -> Prior:
    """The base model's training images through the pipeline, as a :class:`Prior`."""
    samples = list(prior) if not isinstance(prior, str | os.PathLike) else load_site(prior)
    data = read_site(model, samples, batch_size=batch_size)
    if data.features is None or not len(data.age):
        raise ValueError("no usable prior image")
    check = np.abs(data.features.astype(np.float64) @ head.weight + head.bias - data.base)
    if check.max() > 0.05:
        raise ModelError(f"the head read from the graph reproduces the model's age on the "
                         f"prior images to {check.max():.3g} y only")
    logger.info("prior: %d images of %d patients (%d left out)", len(data.age),
                len(set(data.patients)), data.images_read - len(data.age))
    return fit_prior(data.features, data.age, data.patients, seed,
                     grid=int(model.card.extra.get("grid", 1)))


def _warnings(n: int, recipe: Recipe, linear: bool, gain: dict[str, Any],
              cv_mae: dict[Recipe, float], min_ridge: int, prior: bool) -> list[str]:
    out = []
    if n < FEW_IMAGES:
        out.append(f"only {n} usable images: adaptation rarely helps below {FEW_IMAGES}, "
                   "and its before/after has wide intervals")
    if linear and n < min_ridge:
        out.append(f"fewer than {min_ridge} images: only the recalibrations were tried, "
                   "no ridge update of the head"
                   + (" (the prior was not used)" if prior else ""))
    if recipe.kind == "base":
        out.append("no recipe beat the base model on the site's cross-validation: the "
                   "adapted model keeps the base head (its interval and bias correction are "
                   "refitted on the site)")
    elif gain["ci95"][0] <= 0:
        out.append(f"the nested before/after gain ({gain['mae_gain']:+.2f} y MAE, 95% CI "
                   f"{gain['ci95'][0]:+.2f} to {gain['ci95'][1]:+.2f}) is not significant")
    if not linear:
        out.append("the model has no linear head on exported features: recalibration only")
    return out


def _verify(adapted: AgeModel, samples: Sequence[Sample], data: SiteData, update: Update,
            head: tuple[np.ndarray, float] | None, rows: int = 4) -> dict[str, Any]:
    """Run the adapted model on a few site images: its age against ``x·w + b`` on its own
    features (the head refitted) or against the update applied to the base model's age
    (recalibration), and its CAM's mean plus ``cam_bias`` against its age.

    Raises
    ------
    ModelError
        The adapted graph does not compute what was fitted (to 1e-3 y).
    """
    take = data.index[:rows]
    feats: dict[str, np.ndarray] = {}

    def keep(est: AgeEstimate, values: np.ndarray) -> None:
        feats[est.path] = np.asarray(values, np.float64)

    items = [PredictInput(str(samples[i].path), f"v-{j}", samples[i].age_years,
                          samples[i].sex or None, samples[i].view or None)
             for j, i in enumerate(take)]
    age_err = cam_err = 0.0
    cam_bias = adapted.card.extra.get("cam_bias")
    got = 0
    for j, est in enumerate(stream(adapted, items, heatmap=True, on_features=keep)):
        if est.xray_age is None:
            continue
        got += 1
        if head is not None:
            expected = float(feats[est.path] @ head[0] + head[1])
        else:
            expected = float(update.predict(None, data.base[j:j + 1])[0])
        age_err = max(age_err, abs(est.xray_age - expected))
        if est.heatmap is not None and cam_bias is not None:
            cam_err = max(cam_err, abs(float(np.mean(est.heatmap)) + float(cam_bias)
                                       - est.xray_age))
    if age_err > 1e-3:
        raise ModelError(f"the adapted graph's age differs from the fitted head by "
                         f"{age_err:.3g} y")
    return {"images": got, "max_abs_age_diff": age_err, "max_abs_cam_mean_diff": cam_err,
            "tolerance": 1e-3}


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


__all__ = ["Adaptation", "LinearHead", "Nested", "Prior", "Recipe", "SiteData", "Update",
           "adapt", "add_affine", "candidates", "choose", "complexity", "cv_predictions",
           "find_linear_head", "fit_prior", "fit_recipes", "load_site", "nested_oof", "policy",
           "predict_all", "read_site", "set_linear_head"]
