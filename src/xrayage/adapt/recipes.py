"""The candidate recipes of site adaptation, their fit, and the grouped (nested) CV that
chooses among them (:mod:`xrayage.adapt`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import fit_interval, interval
from ..folds import assign_folds
from .prior import ALPHA_FACTORS, Prior

logger = logging.getLogger(__name__)

FEATURE = "xrayage adapt"
FOLDS = 5
MIN_PATIENTS = 10
"""Fewer patients than this are refused: 5 grouped folds need two patients each."""
FEW_IMAGES = 100
"""Below this many images the report warns that adaptation is unlikely to help."""
LAMBDAS: tuple[float, ...] = tuple(float(v) for v in np.logspace(-2, 2, 9))
"""Ridge penalties searched, in units of the mean diagonal of the site's Gram matrix of
standardised features (so λ = 1 weighs the penalty like one average image)."""
ANCHORS = ("shift", "recal")
SE_TOLERANCE = 0.0
"""A recipe simpler than the CV-best is kept when within this many standard errors of it
(0: the best; on covid_idc subsets a half-standard-error rule cost 0.1-0.3 y at 200 images
once the CV was repeated)."""
CV_REPEATS = 3
"""Fold draws the choice's CV error is averaged over (less noise in the choice: on covid_idc
subsets of 200 images, 3 draws lowered the nested MAE by about 0.3 y against one)."""
MIN_RIDGE_IMAGES = 150
"""Fewer usable images: only the recalibrations are candidates, and they must beat the
model by `SMALL_TOLERANCE` standard errors (on covid_idc subsets the ridge updates gained
nothing on average at 100 images and lost at 50, and unguarded recalibrations lost 0.1 y)."""
SMALL_TOLERANCE = 0.5





@dataclass(frozen=True)
class Recipe:
    """One candidate: ``kind`` is ``base``, ``shift``, ``recal``, ``ridge`` (with its
    ``anchor`` and penalty ``lam``) or ``pooled`` (with the base model's training images:
    ``lam`` is the penalty in units of theirs, :mod:`.prior`)."""

    kind: str
    anchor: str = ""
    lam: float = math.inf

    @property
    def label(self) -> str:
        """``base``, ``shift``, ``recal``, ``ridge(recal, λ=0.316)`` or ``pooled(α×3)``."""
        if self.kind == "pooled":
            return f"pooled(α×{self.lam:g})"
        return self.kind if self.kind != "ridge" else f"ridge({self.anchor}, λ={self.lam:.3g})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (λ → ∞ is written as None)."""
        return {"kind": self.kind, "anchor": self.anchor or None,
                "lambda": None if math.isinf(self.lam) else self.lam, "label": self.label}


def policy(images: int, linear: bool, min_ridge_images: int = MIN_RIDGE_IMAGES,
           prior: bool = False) -> tuple[list[Recipe], float]:
    """The candidates and the choice's tolerance for a site of `images` usable images:
    everything, chosen by the best CV MAE, from `min_ridge_images` on (with a linear head;
    the pooled ridge instead of the ridge updates when there is a `prior`); below that the
    recalibrations only, kept only when they beat the model by half a standard error (on
    covid_idc subsets the pooled ridge so guarded lost 0.16 y at 50 images and gained
    0.04 y at 100)."""
    if linear and images >= min_ridge_images:
        return candidates(True, prior=prior), SE_TOLERANCE
    return candidates(False), SMALL_TOLERANCE


def candidates(linear: bool, lambdas: Sequence[float] = LAMBDAS, prior: bool = False
               ) -> list[Recipe]:
    """The recipes searched: ``base`` first (it wins ties), then the recalibrations, then
    (when the model has a linear head on its features) the ridge updates, or, with the
    base model's training images as a `prior`, the pooled ridge instead of them (on a
    covid_idc subset of 200 images, with the previous model's features, the eighteen ridge
    candidates beside it only made the choice noisier: 9.36 against 8.97 y nested)."""
    out = [Recipe("base"), Recipe("shift"), Recipe("recal")]
    if linear and prior:
        out += [Recipe("pooled", lam=factor) for factor in ALPHA_FACTORS]
    elif linear:
        out += [Recipe("ridge", anchor, float(lam)) for anchor in ANCHORS for lam in lambdas]
    return out


@dataclass(frozen=True)
class Update:
    """A fitted recipe: ``age = a + b·ŷ₀ + x·delta + offset`` (``delta`` None: no feature
    term), everything in years."""

    a: float
    b: float
    delta: np.ndarray | None = None
    offset: float = 0.0

    def predict(self, x: np.ndarray | None, base: np.ndarray) -> np.ndarray:
        """Ages for feature rows `x` (N, D) whose base-model ages are `base` (N,)."""
        out = self.a + self.b * np.asarray(base, np.float64) + self.offset
        if self.delta is not None:
            if x is None:
                raise ValueError("this update needs the features")
            out = out + np.asarray(x, np.float64) @ self.delta
        return np.asarray(out, np.float64)

    def head(self, weight: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
        """The new linear head (weights, bias; years) from the base head's."""
        w = self.b * np.asarray(weight, np.float64)
        if self.delta is not None:
            w = w + self.delta
        return w, float(self.a + self.b * bias + self.offset)


def fit_recipes(x: np.ndarray | None, y: np.ndarray, base: np.ndarray,
                recipes: Sequence[Recipe], prior: Prior | None = None) -> dict[Recipe, Update]:
    """Fit every recipe on one training set (one decomposition serves all penalties).

    Parameters
    ----------
    x : numpy.ndarray or None
        (N, D) features (None: recalibration recipes only).
    y : numpy.ndarray
        (N,) chronological ages.
    base : numpy.ndarray
        (N,) the base model's ages.
    recipes : sequence of Recipe
    prior : Prior, optional
        The base model's training images (needed by ``pooled`` recipes).
    """
    y, base = np.asarray(y, np.float64), np.asarray(base, np.float64)
    slope, intercept = (np.polyfit(base, y, 1) if np.ptp(base) > 0 else (1.0, 0.0))
    anchors = {"shift": (float(np.mean(y - base)), 1.0),
               "recal": (float(intercept), float(slope))}
    out: dict[Recipe, Update] = {}
    ridge = [r for r in recipes if r.kind == "ridge"]
    for r in recipes:
        if r.kind == "base":
            out[r] = Update(0.0, 1.0)
        elif r.kind in anchors:
            out[r] = Update(*anchors[r.kind])
        elif r.kind == "pooled":
            if prior is None or x is None:
                raise ValueError("pooled recipes need the features and the prior")
            weight, bias = prior.pooled(x, y, prior.alpha * r.lam)
            out[r] = Update(0.0, 0.0, weight, bias)
    if not ridge:
        return out
    if x is None:
        raise ValueError("ridge recipes need the features")
    x = np.asarray(x)
    mean = x.mean(axis=0, dtype=np.float64)
    sd = x.std(axis=0, dtype=np.float64)
    sd = np.where(sd > 1e-9 * max(float(sd.max()), 1e-30), sd, np.inf)
    z = np.asarray(x, np.float32) - mean.astype(np.float32)
    z *= (1.0 / sd).astype(np.float32)
    gram = (z @ z.T).astype(np.float64)
    scale = max(float(np.trace(gram)) / len(y), 1e-12)
    e, v = np.linalg.eigh(gram)
    e = np.clip(e, 0.0, None)
    for anchor in ANCHORS:
        todo = [r for r in ridge if r.anchor == anchor]
        if not todo:
            continue
        a, b = anchors[anchor]
        resid = y - (a + b * base)
        centre = float(resid.mean())
        vr = v.T @ (resid - centre)
        alphas = np.stack([v @ (vr / (e + r.lam * scale)) for r in todo], axis=1)
        deltas = (z.T @ alphas.astype(np.float32)).astype(np.float64) / sd[:, None]
        offsets = centre - mean @ deltas
        for j, r in enumerate(todo):
            out[r] = Update(a, b, deltas[:, j], float(offsets[j]))
    return out


def predict_all(fitted: dict[Recipe, Update], recipes: Sequence[Recipe], x: np.ndarray | None,
                base: np.ndarray) -> np.ndarray:
    """Every recipe's ages for feature rows `x` (one matrix product): (len(recipes), N)."""
    ups = [fitted[r] for r in recipes]
    out = np.stack([u.a + u.b * np.asarray(base, np.float64) + u.offset for u in ups])
    with_delta = [i for i, u in enumerate(ups) if u.delta is not None]
    if with_delta:
        if x is None:
            raise ValueError("these updates need the features")
        deltas = np.stack([ups[i].delta for i in with_delta], axis=1)  # type: ignore[misc]
        out[with_delta] += (np.asarray(x, np.float64) @ deltas).T
    return out


def cv_predictions(x: np.ndarray | None, y: np.ndarray, base: np.ndarray, fold: np.ndarray,
                   recipes: Sequence[Recipe], prior: Prior | None = None) -> np.ndarray:
    """Out-of-fold predictions of every recipe over the given (patient-grouped) folds:
    (len(recipes), N)."""
    out = np.zeros((len(recipes), len(y)))
    for k in np.unique(fold):
        tr, va = fold != k, fold == k
        fitted = fit_recipes(None if x is None else x[tr], y[tr], base[tr], recipes, prior)
        out[:, va] = predict_all(fitted, recipes, None if x is None else x[va], base[va])
    return out


def complexity(recipe: Recipe) -> tuple[int, float, bool]:
    """Sort key from the simplest recipe (``base``) to the least penalised ridge, then the
    pooled ridges."""
    rank = {"base": 0, "shift": 1, "recal": 2, "ridge": 3}.get(recipe.kind, 4)
    return rank, -recipe.lam, recipe.anchor != "shift"


def choose(x: np.ndarray | None, y: np.ndarray, base: np.ndarray, patients: Sequence[str],
           recipes: Sequence[Recipe], seed: int = 0, tolerance: float = SE_TOLERANCE,
           repeats: int = CV_REPEATS, prior: Prior | None = None
           ) -> tuple[Recipe, dict[Recipe, float], np.ndarray]:
    """Choose a recipe by patient-grouped CV MAE (repeated over `repeats` fold draws).

    The simplest recipe (:func:`complexity`: ``base``, ``shift``, ``recal``, then ridge
    from the largest λ down) whose CV MAE is within ``tolerance`` standard errors (of the
    best recipe's per-patient mean errors) of the best; with ``tolerance=0``, the best
    (the simplest on ties). ``base`` is a candidate, so the chosen recipe's CV MAE is
    never above the base model's.

    Returns
    -------
    recipe : Recipe
    cv_mae : dict
        Every recipe's CV MAE.
    oof : numpy.ndarray
        The chosen recipe's CV predictions (of the first fold draw).
    """
    draws = []
    for r in range(max(1, repeats)):
        fold = assign_folds(patients, FOLDS, ages=y, seed=seed + 1000 * r)
        draws.append(cv_predictions(x, y, base, fold, recipes, prior))
    preds = draws[0]
    err = np.mean([np.abs(d - y) for d in draws], axis=0)
    mae = err.mean(axis=1)
    best = int(np.argmin(mae))
    _, index = np.unique(np.asarray(patients), return_inverse=True)
    per_patient = np.bincount(index, weights=err[best]) / np.bincount(index)
    se = float(per_patient.std(ddof=1) / math.sqrt(len(per_patient)))
    order = sorted(range(len(recipes)), key=lambda i: complexity(recipes[i]))
    pick = next(i for i in order if mae[i] <= mae[best] + tolerance * se)
    return recipes[pick], {r: float(m) for r, m in zip(recipes, mae, strict=True)}, preds[pick]


@dataclass
class Nested:
    """Nested cross-fitting of the whole adaptation: out-of-fold predictions, the recipe
    chosen in each outer fold, and the interval each outer fold's inner CV calibrated."""

    oof: np.ndarray
    fold: np.ndarray
    chosen: list[Recipe]
    lower: np.ndarray
    upper: np.ndarray


def nested_oof(x: np.ndarray | None, y: np.ndarray, base: np.ndarray, patients: Sequence[str],
               recipes: Sequence[Recipe], coverage: float = 0.9, seed: int = 0,
               views: Sequence[str | None] | None = None, tolerance: float = SE_TOLERANCE,
               prior: Prior | None = None) -> Nested:
    """Out-of-fold predictions of the adapted model, patient-disjoint and nested.

    Each outer fold's recipe and λ are chosen (:func:`choose`) on the other folds only,
    fitted there, and used on the fold; its interval is fitted
    (:func:`xrayage.calibration.fit_interval`) on the chosen recipe's inner-CV predictions,
    so the interval's coverage is measured out of sample too.
    """
    outer = assign_folds(patients, FOLDS, ages=y, seed=seed)
    view = list(views) if views is not None else [None] * len(y)
    oof, lower, upper = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
    chosen: list[Recipe] = []
    for k in range(FOLDS):
        tr, va = np.flatnonzero(outer != k), np.flatnonzero(outer == k)
        groups = [patients[int(i)] for i in tr]
        recipe, _, inner = choose(None if x is None else x[tr], y[tr], base[tr], groups,
                                  recipes, seed + 1, tolerance, prior=prior)
        fitted = fit_recipes(None if x is None else x[tr], y[tr], base[tr], [recipe],
                             prior)[recipe]
        oof[va] = fitted.predict(None if x is None else x[va], base[va])
        lower[va], upper[va] = _bounds(inner, y[tr], groups, [view[i] for i in tr], coverage,
                                       oof[va], [view[i] for i in va], seed)
        chosen.append(recipe)
    return Nested(oof, outer, chosen, lower, upper)


def _bounds(pred: np.ndarray, age: np.ndarray, groups: Sequence[str],
            views: Sequence[str | None], coverage: float, new: np.ndarray,
            new_views: Sequence[str | None], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals of `new` predictions from the interval fitted on (`pred`, `age`); the
    largest error either side when too few rows for the fit."""
    try:
        cal = fit_interval(xray_age=pred, age_years=age, groups=list(groups),
                           views=list(views), coverage=coverage, seed=seed)
    except ValueError:
        half = float(np.max(np.abs(age - pred)))
        return new - half, new + half
    bounds = np.array([interval(cal, float(p), view=v)
                       for p, v in zip(new, new_views, strict=True)]).reshape(-1, 2)
    return bounds[:, 0], bounds[:, 1]


